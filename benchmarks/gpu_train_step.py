"""BYOL ResNet-50 training step on one GPU at 224x224: images/s and peak memory, in under 5 minutes.

    python benchmarks/gpu_train_step.py [--batch 64] [--precision bf16|fp16] [--steps 20]

Runs this trainer's step (fused views with per-view BatchNorm, LARS, EMA once per step) in
bf16 or fp16 autocast (fp16 with a GradScaler, as Accelerate does) and channels_last.
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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (see benchmarks/train_step.py for the CPU one)")

    from hub import ModelConfig
    from training.byol import BYOL
    from training.lars import LARS, lars_param_groups

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = BYOL(ModelConfig(architecture="resnet50")).to(device, memory_format=torch.channels_last).train()
    opt = LARS(lars_param_groups([model.online, model.predictor]), lr=4.8, weight_decay=1e-6)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    v1 = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    v2 = torch.randn_like(v1)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype):
            loss, _ = model(v1, v2)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.99)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"{torch.cuda.get_device_name()}: BYOL ResNet-50 224x224, batch {args.batch}, {args.precision} + channels_last")
    print(f"  {args.batch * args.steps / elapsed:.1f} images/s, {elapsed / args.steps * 1000:.1f} ms/step, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
