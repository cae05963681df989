"""``byol-embed run`` end to end against the raw backend, and the Ray engine against the local one.

    python benchmarks/embed_job.py [--images 256] [--arch resnet50] [--batch 32] [--ray]

Data: JPEGs (~500x375, q 90) drawn from the photos that ship with scikit-image, written to disk. Model: a
random-init ResNet-50 at 224² with model.onnx (weights do not change the speed). Three figures, one run:

- raw backend: ONNX Runtime on pre-decoded, preprocessed tensors at the same batch size (no decode, no I/O);
- local engine: the whole job (list, read, decode, preprocess, infer, write Parquet shards);
- ray engine (``--ray``): the same job on a local Ray cluster of this machine's CPUs.

Printed with the CPU's capability: images/s of each; the ratio job / raw (target >= 0.9); the honest ceiling when
decode shares the cores with inference, inference core-time per image / (inference + decode + preprocess
core-time per image), each measured here (decode + preprocess: the job's own ``decode_item`` on one thread, its
thread CPU time; inference: the raw backend's process CPU time per image), and the job's distance from it
(target: within 3 %); for Ray, start-up (cluster, actors, model load, first shard) apart from the steady rate,
and steady ray / steady local (target >= 0.9 on 2,000 images).
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

from tests.support import processes  # noqa: E402


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


def raw_backend(model: Path, paths: list[Path], batch: int, streamed: bool) -> tuple[float, float]:
    """Images/s of the backend alone on preprocessed tensors, and its CPU seconds per image (all its threads):
    one ONNX Runtime session on every core, or (``streamed``) exactly what the job runs (each batch split over
    the inference plan's streams, one session thread per stream)."""
    from hub.hub_io import resolve_model
    from hub.preprocess import preprocess
    from service.runtime.factory import build_backend, build_streamed_backend
    from service.server.settings import ServiceSettings

    resolved = resolve_model(model, files=(), optional_files=("model.onnx",))
    backend = (build_streamed_backend if streamed else build_backend)(resolved, ServiceSettings(model=str(model)))
    from PIL import Image

    pixels = preprocess([Image.open(p) for p in paths], resolved.config.preprocessing)
    backend.run(pixels[:batch])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(pixels), batch):
        backend.run(pixels[i:i + batch])
    return len(pixels) / (time.perf_counter() - start), (time.process_time() - cpu) / len(pixels)


def decode_core_time(model: Path, folder: Path) -> float:
    """CPU seconds per image of what the job does per item before inference (read, decode, preprocess), one thread."""
    from hub.config import ModelConfig
    from service.embed.pipeline import decode_item
    from storage.sources import open_source

    config = ModelConfig.load(model)
    source = open_source(str(folder))
    decode_item(source, 0, config, 40_000_000)
    cpu = time.thread_time()
    for i in range(len(source)):
        decode_item(source, i, config, 40_000_000)
    return (time.thread_time() - cpu) / len(source)


def job(model: Path, data: Path, out: Path, batch: int, engine: str, workers: int):
    from service.embed.job import EmbedSettings, run_job
    from service.runtime.settings import RuntimeSettings

    shutil.rmtree(out, ignore_errors=True)
    summary = run_job(EmbedSettings(runtime=RuntimeSettings(model=str(model)), input=str(data), output=str(out),
                                    batch_size=batch,
                                    shard_size=max(batch * 2, 64), engine=engine, workers=workers, progress=False))
    if summary.interrupted:  # the job stopped at a shard boundary on Ctrl-C / SIGTERM (and shut its cluster down)
        raise KeyboardInterrupt
    assert summary.errors == 0, summary.line()
    return summary


def add_job_arguments(parser: argparse.ArgumentParser, images: str = "JPEGs to embed") -> None:
    """The data and model options the embedding-job benchmarks share."""
    parser.add_argument("--images", type=int, default=512, help=f"{images} (default 512)")
    parser.add_argument("--arch", default="resnet50", help="resnet18/34/50/101/152 (default resnet50)")
    parser.add_argument("--batch", type=int, default=32, help="inference batch (default 32)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser)
    parser.add_argument("--ray", action="store_true", help="also run the Ray engine on a local cluster")
    parser.add_argument("--ray-workers", type=int, default=1, help="Ray actors (default 1 on 2 cores)")
    parser.add_argument("--rounds", type=int, default=1, help="measure raw and the local job this many times, "
                        "alternating, and report the median of each round's ratios (a shared machine drifts "
                        "between phases; default 1)")
    args = parser.parse_args()

    from hub.hardware import cpu_summary

    threads = os.cpu_count() or 2
    print(f"CPU: {cpu_summary()}", flush=True)
    try:
        # ignore_cleanup_errors: a signal mid-job can leave a job thread adding a file while the folder is removed
        with processes.interruptible(), tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
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
    import statistics

    from hub import BYOLModel, ModelConfig

    paths = make_images(root / "images", args.images)
    model = root / "model"
    BYOLModel(ModelConfig(architecture=args.arch, name=f"random-{args.arch}")).save_pretrained(
        model, onnx=True, transformers=False)
    decode_cpu = decode_core_time(model, root / "images")
    print(f"{args.images} JPEGs (500x375), {args.arch} at 224x224, batch {args.batch}, {threads} cores")
    print(f"  read + decode + preprocess        {1 / decode_cpu:7.1f} img/s/core   {decode_cpu * 1000:.2f} core-ms/img")
    ratios: dict[str, list[float]] = {"raw": [], "raw_streams": [], "ceiling": [], "steady_ceiling": []}
    for round_ in range(args.rounds):
        raw, _ = raw_backend(model, paths, args.batch, streamed=False)
        raw_streams, infer_cpu = raw_backend(model, paths, args.batch, streamed=True)
        ceiling = infer_cpu / (infer_cpu + decode_cpu)
        local = job(model, root / "images", root / "out-local", args.batch, "local", 0)
        local_ips = local.images / local.seconds
        ratios["raw"].append(local_ips / raw)
        ratios["raw_streams"].append(local_ips / raw_streams)
        ratios["ceiling"].append(local_ips / raw_streams / ceiling)
        ratios["steady_ceiling"].append(local.steady_images_per_s / raw_streams / ceiling)
        tag = f" (round {round_ + 1})" if args.rounds > 1 else ""
        print(f"  raw backend (pre-decoded tensors) {raw:7.1f} img/s   one ONNX Runtime session, every core{tag}")
        print(f"  raw, as the job runs it (streams) {raw_streams:7.1f} img/s   inference {infer_cpu * 1000:.1f} "
              f"core-ms/img; ceiling (inference / (inference + decode)) {ceiling:.3f}x")
        print(f"  byol-embed, local engine          {local_ips:7.1f} img/s   (start-up {local.startup_s:.1f} s, then "
              f"{local.steady_images_per_s:.1f} img/s)", flush=True)
    med = {k: statistics.median(v) for k, v in ratios.items()}
    print(f"  ratio job / raw backend: {med['raw']:.3f}x   job / raw as the job runs it: {med['raw_streams']:.3f}x")
    print(f"  job / ceiling: {med['ceiling']:.3f}   steady state / ceiling: {med['steady_ceiling']:.3f}"
          + (f"   (medians of {args.rounds} rounds)" if args.rounds > 1 else ""), flush=True)
    if args.ray:
        ray = job(model, root / "images", root / "out-ray", args.batch, "ray", args.ray_workers)
        ray_ips = ray.images / ray.seconds
        print(f"  byol-embed, ray engine            {ray_ips:7.1f} img/s   (local cluster, {args.ray_workers} "
              f"actor(s); start-up {ray.startup_s:.1f} s: cluster, actors, model, first shard; then "
              f"{ray.steady_images_per_s:.1f} img/s)")
        print(f"  ratio ray / local, whole job: {ray_ips / local_ips:.3f}x   steady state: "
              f"{ray.steady_images_per_s / local.steady_images_per_s:.3f}x   (start-up amortizes: at this steady rate "
              f"{ray.startup_s:.1f} s of start-up is {ray.startup_s * ray.steady_images_per_s:.0f} images' worth)",
              flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
