"""BYOL ResNet-50 training on one GPU at 224x224: model only vs end to end for both data backends, in under 5 min.

    PYTHONPATH=. python benchmarks/gpu_train_step.py [--batch 64] [--precision bf16|fp16] [--steps 20] [--workers 14]

Runs from the source tree (the GPU machine has its own torch). This trainer's step (fused views with per-view
BatchNorm, LARS, EMA once per step) in bf16 or fp16 autocast (fp16 with a GradScaler, as Accelerate does) and
channels_last, first on random tensors already on the GPU (model only), then end to end on JPEGs on disk
(~500x375, drawn from scikit-image's photos) through the trainer's loader with each data backend:
``opencv`` (decode + views in ``--workers`` CPU loader processes) and ``device`` (workers only read bytes and draw
parameters; decode_jpeg and the views run on the GPU). Prints images/s and peak memory for each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per step (the seed: 64 per GPU)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"], help="autocast dtype")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--workers", type=int, default=14, help="loader worker processes (default 14)")
    parser.add_argument("--model-only", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to check the script runs")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (see benchmarks/train_step.py for the CPU one)")

    from hub import ModelConfig
    from training.byol import BYOL
    from training.lars import LARS, lars_param_groups

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
    model = BYOL(ModelConfig(architecture="resnet50")).to(device, memory_format=torch.channels_last).train()
    opt = LARS(lars_param_groups([model.online, model.predictor]), lr=4.8, weight_decay=1e-6)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16" and cuda)
    v1 = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    v2 = torch.randn_like(v1)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss, _ = model(v1, v2)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.99)

    def timed(make_views) -> tuple[float, float]:
        nonlocal v1, v2
        for _ in range(args.warmup):
            v1, v2 = make_views()
            step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            v1, v2 = make_views()
            step()
        sync()
        elapsed = time.perf_counter() - start
        return args.batch * args.steps / elapsed, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0

    from hub.hardware import cpu_summary

    print(f"{torch.cuda.get_device_name() if cuda else 'cpu'}: BYOL ResNet-50 224x224, batch {args.batch}, {args.precision} + "
          f"channels_last; CPU: {cpu_summary()}")
    model_only = timed(lambda: (v1, v2))
    print(f"  model only (views already on the GPU)  {model_only[0]:8.1f} images/s, peak {model_only[1]:.2f} GiB")
    if args.steps and not args.model_only:
        import tempfile

        from benchmarks.embed_job import make_images
        from hub.config import IMAGENET_MEAN, IMAGENET_STD
        from storage.sources import open_source
        from training.augment import AugmentConfig
        from training.data import (
            ResumableSampler,
            TwoViewDataset,
            collate_raw,
            collate_views,
            device_views,
            single_threaded_worker,
            to_device_views,
        )

        with tempfile.TemporaryDirectory() as tmp:
            count = args.batch * (args.steps + args.warmup + 2)
            make_images(Path(tmp), min(count, 2048))
            augment = AugmentConfig(size=224)
            for backend in ("opencv", "device"):
                data = TwoViewDataset(open_source(tmp), augment, 0, backend)
                sampler = ResumableSampler(len(data), len(data) // args.batch * args.batch, end_epoch=100)
                loader = torch.utils.data.DataLoader(
                    data, batch_size=args.batch, sampler=sampler, num_workers=args.workers, drop_last=True,
                    collate_fn=collate_raw if backend == "device" else collate_views, persistent_workers=True,
                    prefetch_factor=4, worker_init_fn=single_threaded_worker, pin_memory=backend != "device")
                batches = iter(loader)

                def make_views(backend=backend, batches=batches):
                    batch = next(batches)
                    if backend == "device":
                        a, b, _ = device_views(batch, device, augment, IMAGENET_MEAN, IMAGENET_STD, True)
                        return a, b
                    return tuple(to_device_views(v, device, IMAGENET_MEAN, IMAGENET_STD, True) for v in batch[:2])

                ips, peak = timed(make_views)
                print(f"  end to end, data backend {backend:<7}   {ips:8.1f} images/s, peak {peak:.2f} GiB "
                      f"({args.workers} loader workers; {ips / model_only[0]:.2f}x model only)")


if __name__ == "__main__":
    main()
