"""``byol-embed`` on one GPU: where decoding becomes the limit (runs in under 5 minutes).

    PYTHONPATH=. python benchmarks/embed_gpu.py [--images 2048] [--batch 128] [--workers 16]

Runs from the source tree (PYTHONPATH, no ``pip install -e .``: a GPU machine has its own torch). Prints
images/s of the torch backend on CUDA on pre-decoded tensors (model only), and of the whole local-engine job
on JPEGs on disk (read, decode and preprocess on ``--workers`` CPU threads, inference, Parquet shards), and
their ratio: below 1 the CPUs' decoding caps the GPU, which is the number of decode cores a GPU needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs (default 2048)")
    parser.add_argument("--batch", type=int, default=128, help="inference batch (default 128)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 8, help="decode threads (default: cores)")
    args = parser.parse_args()

    import torch

    from benchmarks.embed_job import make_images
    from hub import BYOLModel, ModelConfig
    from hub.hardware import cpu_summary
    from service.embed.job import EmbedSettings, run_job
    from service.runtime.settings import RuntimeSettings

    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here; this benchmark is for a GPU machine")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; CPU: {cpu_summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root / "images", args.images)
        model = BYOLModel(ModelConfig(architecture="resnet50"))
        model.save_pretrained(root / "model", transformers=False)
        net = model.cuda().eval().to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for _ in range(3):
                net.serving_outputs(x)
            torch.cuda.synchronize()
            start = time.perf_counter()
            steps = max(args.images // args.batch, 8)
            for _ in range(steps):
                net.serving_outputs(x)
            torch.cuda.synchronize()
        model_only = steps * args.batch / (time.perf_counter() - start)
        runtime = RuntimeSettings(model=str(root / "model"), backend="torch", device="cuda")
        summary = run_job(EmbedSettings(runtime=runtime, input=str(root / "images"), output=str(root / "out"),
                                        batch_size=args.batch, shard_size=1024, workers=args.workers, progress=False))
        end_to_end = summary.images / summary.seconds
    print(f"ResNet-50 224x224, batch {args.batch}, fp32, {args.workers} decode threads")
    print(f"  model only (pre-decoded tensors on the GPU) {model_only:8.1f} img/s")
    print(f"  byol-embed end to end (JPEGs on disk)       {end_to_end:8.1f} img/s")
    print(f"  ratio end to end / model only: {end_to_end / model_only:.2f}x  "
          f"(decode ~{end_to_end / args.workers:.0f} img/s per thread)")


if __name__ == "__main__":
    main()
