"""A dataset that grows: an append run against a full run, and a running server's switch to the new generation.

    python benchmarks/append.py                        # 100 k synthetic JPEGs, +1 %, ResNet-18 at 64x64
    python benchmarks/append.py --images 20000 --size 112 --no-server

Data: synthetic JPEGs (96x96, blocks and gradients of random colours, quality 90) in folders of 1,000. Model: a
random-init ResNet-18 at ``--size`` with model.onnx (weights do not change the speed). One run:

1. the full run (``byol-embed run``, in this process) and a Flat index of it;
2. a server (``byol-serve --index``, its own process) checking the folder every ``--poll`` seconds, its RSS
   sampled every 20 ms from ``/proc``;
3. ``--append`` new images (1 %) and the append run, whose index follows in place;
4. the time until the server answers from the new generation (from the index's commit; the server's own
   ``byol_index_switch_seconds``, from noticing to serving, beside it) and its peak RSS during the switch.

Printed beside the CPU's flags: both runs' times, start-ups and their ratio against the target (the append at most
3 % of the full run plus the start-up, the model's load and the first batch, as the full run measured it), the
switch time and the peak RSS over the one before the switch, against the index's size (target: at most two
indexes, the old and the new, during the switch).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import processes  # noqa: E402


def make_images(folder: Path, start: int, count: int, seed: int) -> None:
    """``count`` distinct JPEGs, ids ``dNNN/NNNNNNN.jpg`` from ``start``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 96, dtype=np.float32)
    for i in range(start, start + count):
        colours = rng.integers(0, 256, (4, 3))
        img = np.empty((96, 96, 3), np.float32)
        img[:] = base[None, :, None] * (colours[0] / 255.0)
        img[:48, :48] = colours[1]
        img[48:, 48:] = colours[2]
        img[rng.integers(0, 80):, rng.integers(0, 80):] += colours[3] * 0.3
        path = folder / f"d{i // 1000:03d}" / f"{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


class Sampler(threading.Thread):
    """The RSS of ``pid`` every 20 ms: its peak since the last :meth:`reset`."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0.0, threading.Event()

    def reset(self) -> float:
        self.peak = rss_mb(self.pid)
        return self.peak

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))


def run_job(model: Path, data: Path, out: Path, args: argparse.Namespace):
    from service.embed.job import EmbedSettings, run_job
    from service.runtime.settings import RuntimeSettings

    summary = run_job(EmbedSettings(runtime=RuntimeSettings(model=str(model)), input=str(data), output=str(out),
                                    batch_size=args.batch, shard_size=args.shard_size, progress=not args.quiet))
    assert not summary.interrupted and summary.errors == 0, summary.line()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="images in the set (default 100000)")
    parser.add_argument("--append", type=float, default=0.01, help="fraction added (default 0.01)")
    parser.add_argument("--arch", default="resnet18", help="architecture (default resnet18)")
    parser.add_argument("--size", type=int, default=64, help="input size (default 64)")
    parser.add_argument("--batch", type=int, default=64, help="inference batch (default 64)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default 10000)")
    parser.add_argument("--poll", type=float, default=0.5, help="the server's --index-poll-s (default 0.5)")
    parser.add_argument("--no-server", action="store_true", help="the runs only")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    from hub import BYOLModel, ModelConfig
    from hub.config import PreprocessConfig
    from hub.hardware import cpu_summary
    from service.embed.index import build_index

    print(f"CPU: {cpu_summary()}", flush=True)
    with processes.interruptible(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, out, model = root / "data", root / "emb", root / "model"
        added = max(1, int(args.images * args.append))
        started = time.perf_counter()
        make_images(data, 0, args.images, seed=0)
        print(f"{args.images} synthetic JPEGs written in {time.perf_counter() - started:.0f} s", flush=True)
        BYOLModel(ModelConfig(architecture=args.arch, name=f"random-{args.arch}",
                              preprocessing=PreprocessConfig(resize_size=args.size, crop_size=args.size))
                  ).save_pretrained(model, onnx=True, transformers=False)
        full = run_job(model, data, out, args)
        print(f"full run: {full.line()}", flush=True)
        index = build_index(out)
        index_mb = sum(p.stat().st_size for p in (out / "index").iterdir()) / 2**20
        print(f"index: {index['count']} vectors, {index_mb:.0f} MB, built in {index['built_s']} s", flush=True)

        server = None
        if not args.no_server:
            from tests.support.server import start_server

            server, url = start_server(model, "--index", str(out), "--index-poll-s", str(args.poll))
            sampler = Sampler(server.pid)
            sampler.start()
        try:
            make_images(data, args.images, added, seed=1)
            if server is not None:
                before = sampler.reset()
            append = run_job(model, data, out, args)
            committed = time.perf_counter()
            print(f"append run: {append.line()}", flush=True)
            target = 0.03 * full.seconds + full.startup_s
            print(f"append of {added} to {args.images}: {append.seconds:.1f} s vs full run {full.seconds:.1f} s = "
                  f"{100 * append.seconds / full.seconds:.2f} % (start-up {append.startup_s:.1f} s: listing, "
                  f"comparing, model); target 3 % of the full run + its start-up = {target:.1f} s: "
                  f"{'met' if append.seconds <= target else 'MISSED'}", flush=True)
            if server is not None:
                import httpx

                while httpx.get(f"{url}/info", timeout=30).json()["search"]["generation"] != 2:
                    time.sleep(0.01)
                seen = time.perf_counter() - committed
                time.sleep(2 * args.poll)  # after the switch: the old index is gone
                after = rss_mb(server.pid)
                metrics = httpx.get(f"{url}/metrics", timeout=30).text
                switch = float(re.search(r"^byol_index_switch_seconds (\S+)", metrics, re.M).group(1))
                print(f"server: answers from generation 2 {seen:.2f} s after the index's commit (polling every "
                      f"{args.poll} s; the load and switch itself {switch:.2f} s)", flush=True)
                print(f"server RSS: {before:.0f} MB before, peak {sampler.peak:.0f} MB during the switch (+"
                      f"{sampler.peak - before:.0f} MB = {(sampler.peak - before) / index_mb:.2f}x the {index_mb:.0f} "
                      f"MB index), {after:.0f} MB after; target: at most one extra index during the switch: "
                      f"{'met' if sampler.peak - before <= 1.2 * index_mb else 'MISSED'}", flush=True)
        finally:
            if server is not None:
                sampler.stopped.set()
                processes.stop(server, timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
