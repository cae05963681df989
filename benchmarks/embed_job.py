"""``byol-embed run`` end to end against the raw backend, and the Ray engine against the local one.

    python benchmarks/embed_job.py [--images 256] [--arch resnet50] [--batch 32] [--ray]

Data: JPEGs (~500x375, q 90) drawn from the photos that ship with scikit-image, written to disk. Model: a
random-init ResNet-50 at 224² with model.onnx (weights do not change the speed). Three figures, one run:

- raw backend: ONNX Runtime on pre-decoded, preprocessed tensors at the same batch size (no decode, no I/O);
- local engine: the whole job (list, read, decode, preprocess, infer, write Parquet shards);
- ray engine (``--ray``): the same job on a local Ray cluster of this machine's CPUs.

Printed: images/s of each and the ratios job / raw (target >= 0.9 on 2 cores: decode overlapped, writes off the
critical path) and ray / local (target >= 0.8), with the CPU's capability.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import processes  # noqa: E402


def make_images(folder: Path, count: int) -> list[Path]:
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    photos = []
    for path in sorted(data.glob("*")):
        if path.suffix.lower() in (".png", ".jpg"):
            img = Image.open(path).convert("RGB")
            if min(img.size) >= 300:
                photos.append(img.resize((500, 375)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = photos[i % len(photos)]
        if (i // len(photos)) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(folder / f"{i:05d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def raw_backend(model: Path, paths: list[Path], batch: int, threads: int) -> float:
    from hub.hub_io import resolve_model
    from hub.preprocess import preprocess
    from service.backends.onnx import OnnxBackend

    resolved = resolve_model(model, files=())
    backend = OnnxBackend(resolved, threads=threads)
    from PIL import Image

    pixels = preprocess([Image.open(p) for p in paths], resolved.config.preprocessing)
    backend.run(pixels[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        backend.run(pixels[i:i + batch])
    return len(pixels) / (time.perf_counter() - start)


def job(model: Path, data: Path, out: Path, batch: int, engine: str, workers: int) -> float:
    from service.embed.job import EmbedSettings, run_job

    shutil.rmtree(out, ignore_errors=True)
    summary = run_job(EmbedSettings(model=str(model), input=str(data), output=str(out), batch_size=batch,
                                    shard_size=max(batch * 2, 64), engine=engine, workers=workers, progress=False))
    if summary.interrupted:  # the job stopped at a shard boundary on Ctrl-C / SIGTERM (and shut its cluster down)
        raise KeyboardInterrupt
    assert summary.errors == 0, summary.line()
    return summary.images / summary.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="JPEGs to embed (default 512)")
    parser.add_argument("--arch", default="resnet50", help="resnet18/34/50/101/152 (default resnet50)")
    parser.add_argument("--batch", type=int, default=32, help="inference batch (default 32)")
    parser.add_argument("--ray", action="store_true", help="also run the Ray engine on a local cluster")
    parser.add_argument("--ray-workers", type=int, default=1, help="Ray actors (default 1 on 2 cores)")
    args = parser.parse_args()

    from hub.hardware import cpu_summary

    threads = os.cpu_count() or 2
    print(f"CPU: {cpu_summary()}", flush=True)
    try:
        with processes.interruptible(), tempfile.TemporaryDirectory() as tmp:
            measure(args, Path(tmp), threads)
    except KeyboardInterrupt:
        print("interrupted: the job and any Ray cluster it started have been stopped", flush=True)
        return 130
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    return 0


def measure(args: argparse.Namespace, root: Path, threads: int) -> None:
    from hub import BYOLModel, ModelConfig

    paths = make_images(root / "images", args.images)
    model = root / "model"
    BYOLModel(ModelConfig(architecture=args.arch, name=f"random-{args.arch}")).save_pretrained(
        model, onnx=True, transformers=False)
    raw = raw_backend(model, paths, args.batch, threads)
    local = job(model, root / "images", root / "out-local", args.batch, "local", 0)
    print(f"{args.images} JPEGs (500x375), {args.arch} at 224x224, batch {args.batch}, {threads} cores")
    print(f"  raw backend (pre-decoded tensors) {raw:7.1f} img/s")
    print(f"  byol-embed, local engine          {local:7.1f} img/s")
    print(f"  ratio job / raw backend: {local / raw:.2f}x", flush=True)
    if args.ray:
        ray_ips = job(model, root / "images", root / "out-ray", args.batch, "ray", args.ray_workers)
        print(f"  byol-embed, ray engine            {ray_ips:7.1f} img/s  (local cluster, {args.ray_workers} actor(s),"
              " start-up included)")
        print(f"  ratio ray / local: {ray_ips / local:.2f}x", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
