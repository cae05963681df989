"""``byol-embed run`` reading from and writing to S3 against the same job on local disk, and the Ray driver's memory.

    python benchmarks/object_storage.py [--images 512] [--arch resnet50] [--rounds 3] [--formats files,parquet]
                                        [--ray-sizes 400,1600]

The S3 endpoint is moto's server in a process of its own on loopback (``python -m moto.server``): every read is a
ranged HTTP GET and every shard an HTTP PUT through s3fs, as on a real store, but the server shares this machine's
cores with the job (a real store does not), so the ratio is a floor. Data: JPEGs (~500x375, q 90) drawn from the
photos that ship with scikit-image, the same files on disk and under ``s3://bench/images/``. Model: a random-init
ResNet at 224x224 with model.onnx.

Printed with the CPU's capability:
- for each input layout (``files``: one object per JPEG, one GET each; ``parquet``: the same JPEGs' bytes in one
  Parquet file, one GET per row group of 64), images/s of the local job (disk -> disk) and of the S3 job
  (S3 -> S3), alternating, ``--rounds`` times, the medians of the per-round ratios S3 / disk, whole job and
  steady state (target >= 0.9), and the share of the cores the S3 server took;
- ``--ray-sizes``: the Ray engine (S3 -> S3, a local cluster) on two dataset sizes, each in a fresh driver
  process, with the driver's peak RSS: it must not grow with the dataset (the actors write the shards; the
  driver receives acknowledgements).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.embed_job import add_job_arguments, make_images  # noqa: E402
from tests.support import processes  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(endpoint: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).read()
            return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"moto's server did not answer on {endpoint}") from None
            time.sleep(0.2)


def job(model: Path, data: str, out: str, batch: int, options: dict, engine: str = "local", workers: int = 0):
    from service.embed.job import EmbedSettings, run_job
    from service.runtime.settings import RuntimeSettings
    from storage.store import Store

    Store(out, options).remove_tree("")  # every round starts from an empty folder
    summary = run_job(EmbedSettings(runtime=RuntimeSettings(model=str(model)), input=data, output=out, batch_size=batch,
                                    shard_size=128,
                                    engine=engine, workers=workers, storage_options=options, progress=False))
    if summary.interrupted:
        raise KeyboardInterrupt
    assert summary.errors == 0 and summary.shards_written == summary.shards_total, summary.line()
    return summary


DRIVER = """
import json, sys
from service.embed.job import EmbedSettings, run_job
from service.runtime.settings import RuntimeSettings
args = json.loads(sys.argv[1])
s = run_job(EmbedSettings(runtime=RuntimeSettings(model=args["model"]), input=args["input"], output=args["output"], batch_size=args["batch"],
                          shard_size=128, engine="ray", workers=1, storage_options=args["options"], progress=False))
print(json.dumps({"images": s.images, "seconds": s.seconds, "steady": s.steady_images_per_s,
                  # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss starts at the parent's RSS
                  "peak_rss_mb": next(int(l.split()[1]) for l in open("/proc/self/status")
                                      if l.startswith("VmHWM")) / 1024}))
"""


def ray_driver(model: Path, data: str, out: str, batch: int, options: dict) -> dict:
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = processes.run([sys.executable, "-c", DRIVER, json.dumps({"model": str(model), "input": data, "output": out,
                                                                   "batch": batch, "options": options})],
                         capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser, "JPEGs for the disk vs S3 ratio")
    parser.add_argument("--rounds", type=int, default=4, help="disk and S3 runs, alternating, disk first in odd "
                        "rounds and S3 first in even ones (default 4: the median of the per-round ratios; this "
                        "machine drifts between phases)")
    parser.add_argument("--formats", default="files,parquet",
                        help="input layouts measured: files (one object per JPEG: one GET each), parquet (the JPEGs' "
                             "bytes in a Parquet file, row groups of 64: one GET per row group) (default both)")
    parser.add_argument("--ray-sizes", default="400,1600",
                        help="two dataset sizes for the Ray driver's peak RSS, on resnet18 (default 400,1600; "
                             "'' skips)")
    args = parser.parse_args()

    from hub.hardware import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(CREDENTIALS)
    try:
        with processes.interruptible(), tempfile.TemporaryDirectory() as tmp, \
                processes.started([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
            wait_for(endpoint)
            measure(args, Path(tmp), endpoint, server.pid)
    except KeyboardInterrupt:
        print("interrupted: the jobs, the S3 server and any Ray cluster have been stopped", flush=True)
        return 130
    return 0


def server_cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(args: argparse.Namespace, root: Path, endpoint: str, server: int) -> None:
    import s3fs

    from hub import BYOLModel, ModelConfig

    options = {"endpoint_url": endpoint}
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir("bench")
    paths = make_images(root / "images", args.images)
    for path in paths:
        fs.pipe_file(f"bench/images/{path.name}", path.read_bytes())
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    model = root / "model"
    BYOLModel(ModelConfig(architecture=args.arch, name=f"random-{args.arch}")).save_pretrained(
        model, onnx=True, transformers=False)
    print(f"{args.images} JPEGs (500x375, {megabytes:.1f} MB), {args.arch} at 224x224, batch {args.batch}, "
          f"{os.cpu_count()} cores; S3: moto's server on loopback (a process on the same cores)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "parquet").mkdir()
    pq.write_table(pa.table({"id": [p.name for p in paths], "image": [p.read_bytes() for p in paths]}),
                   root / "parquet" / "images.parquet", row_group_size=64)
    fs.pipe_file("bench/parquet/images.parquet", (root / "parquet" / "images.parquet").read_bytes())
    job(model, str(root / "images"), str(root / "out"), args.batch, {})  # warm-up, not measured (a fresh process)
    for layout in [f.strip() for f in args.formats.split(",") if f.strip()]:
        local_input, remote_input = {"files": (root / "images", "s3://bench/images/"),
                                     "parquet": (root / "parquet", "s3://bench/parquet/")}[layout]
        print(f"input: {layout}" + (" (one GET per image)" if layout == "files" else " (one GET per row group of 64)"))
        compare(args, model, str(local_input), remote_input, root, options, server)

    sizes = [int(s) for s in args.ray_sizes.split(",") if s.strip()]
    if not sizes:
        return
    small = root / "model18"
    BYOLModel(ModelConfig(architecture="resnet18", name="random-resnet18")).save_pretrained(
        small, onnx=True, transformers=False)
    print("Ray engine, S3 -> S3, resnet18, shards of 128, one actor; the driver in a fresh process per size:")
    for size in sizes:
        prefix = f"bench/ray-{size}"
        for i in range(size):
            fs.copy(f"bench/images/{paths[i % len(paths)].name}", f"{prefix}/images/{i:06d}.jpg")
        result = ray_driver(small, f"s3://{prefix}/images/", f"s3://{prefix}/emb/", args.batch, options)
        print(f"  {size:>6} images: driver peak RSS {result['peak_rss_mb']:7.1f} MB   "
              f"({result['images'] / result['seconds']:.1f} img/s, steady {result['steady']:.1f})", flush=True)


def compare(args, model: Path, local_input: str, remote_input: str, root: Path, options: dict, server: int) -> None:
    ratios, steady, share = [], [], []
    for round_ in range(args.rounds):
        def on_s3():
            before = server_cpu(server)
            summary = job(model, remote_input, "s3://bench/emb/", args.batch, options)
            return summary, server_cpu(server) - before

        if round_ % 2 == 0:  # ABBA: disk first in even rounds, S3 first in odd ones (no order bias)
            disk = job(model, local_input, str(root / "out"), args.batch, {})
            remote, served = on_s3()
        else:
            remote, served = on_s3()
            disk = job(model, local_input, str(root / "out"), args.batch, {})
        disk_ips, s3_ips = disk.images / disk.seconds, remote.images / remote.seconds
        ratios.append(s3_ips / disk_ips)
        steady.append(remote.steady_images_per_s / disk.steady_images_per_s)
        share.append(served / (remote.seconds * (os.cpu_count() or 1)))
        print(f"  round {round_ + 1} ({'disk' if round_ % 2 == 0 else 'S3'} first): disk -> disk {disk_ips:6.1f} img/s (start-up {disk.startup_s:.2f} s, steady "
              f"{disk.steady_images_per_s:.1f})   S3 -> S3 {s3_ips:6.1f} img/s (start-up {remote.startup_s:.2f} s, "
              f"steady {remote.steady_images_per_s:.1f})   S3 / disk {ratios[-1]:.3f}x; the S3 server used "
              f"{served:.1f} core-s ({100 * share[-1]:.1f} % of the cores during the S3 job)", flush=True)

    print(f"  ratio S3 / disk: {statistics.median(ratios):.3f}x whole job, {statistics.median(steady):.3f}x steady "
          f"(medians of {args.rounds} rounds; target >= 0.9); the local S3 server took "
          f"{100 * statistics.median(share):.1f} % of the cores a real store would not", flush=True)


if __name__ == "__main__":
    sys.exit(main())
