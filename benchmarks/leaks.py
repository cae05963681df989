"""``byol-embed leaks`` at scale: recall and precision of planted cross-set copies, and its time against ``dedup``
on the union of the two sets, in one run.

    python benchmarks/leaks.py                          # A: 100 k vectors, B: 10 k, 500 planted copies, dim 512
    python benchmarks/leaks.py --a 1000000 --b 100000   # larger

A and B are vectors on the unit sphere drawn like real embeddings (a mixture of 256 clusters, cosines ~0.5 within
a cluster: ``benchmarks/curate.py``'s generator, with its own planted duplicate groups inside each set). 500 rows
of B are then replaced by copies of random rows of A at cosine 0.93-0.99 to them: the spread that dedup's
transforms (JPEG quality 20, halved, cropped to 90 %, brightness +-10 %) give on real photos, as
``benchmarks/curate.py --quality`` measures. Both are written as embedding folders (the shards ``byol-embed run``
writes); ``leaks A B`` runs at the default threshold, then ``dedup`` on a folder holding A and B together. Each
runs in a process of its own (the time includes its start; its peak RSS is its own). Printed beside the CPU's
flags: recall and precision of the planted pairs, the two times and their ratio. Targets on 2 cores: recall and
precision >= 0.95, leaks <= 1.2x dedup on the union.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.curate import planted_vectors, write_folder  # noqa: E402


def run(argv: list[str]) -> tuple[dict, float, float]:
    """``python -m service.embed ARGV --json`` in its own process: (summary, seconds, peak RSS MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "service.embed", *argv, "--json", "--no-progress"],
                            stdout=subprocess.PIPE, cwd=REPO)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed")
    return json.loads(stdout), time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=int, default=100_000, help="vectors in A, the set checked against (default 100000)")
    parser.add_argument("--b", type=int, default=10_000, help="vectors in B, the set checked (default 10000)")
    parser.add_argument("--planted", type=int, default=500, help="copies of A's rows planted in B (default 500)")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (default 512)")
    args = parser.parse_args()
    from hub.hardware import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    rng = np.random.default_rng(1)
    a, _ = planted_vectors(args.a, args.dim, seed=0)
    b, _ = planted_vectors(args.b, args.dim, seed=1)
    sources = rng.choice(args.a, args.planted, replace=False)
    targets = rng.choice(args.b, args.planted, replace=False)
    for src, dst in zip(sources, targets):
        cosine = 0.93 + 0.06 * rng.random()
        noise = rng.standard_normal(args.dim).astype(np.float32)
        noise -= (noise @ a[src]) * a[src]
        noise /= np.linalg.norm(noise)
        b[dst] = cosine * a[src] + np.sqrt(1 - cosine**2) * noise
    truth = {f"b{int(d):08d}": f"a{int(s):08d}" for s, d in zip(sources, targets)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "a", a, prefix="a")
        write_folder(root / "b", b, prefix="b")
        write_folder(root / "union", np.concatenate([a, b]))
        del a, b
        summary, leak_s, leak_rss = run(["leaks", str(root / "a"), str(root / "b")])
        import pyarrow.parquet as pq

        table = pq.read_table(root / "b" / "curation" / "leaks.parquet", columns=["id", "id_a"]).to_pydict()
        found = dict(zip(table["id"], table["id_a"]))
        correct = sum(found.get(d) == s for d, s in truth.items())
        recall, precision = correct / len(truth), correct / max(1, len(found))
        dedup, dedup_s, dedup_rss = run(["dedup", str(root / "union")])
    print(f"leaks A={args.a} B={args.b} dim={args.dim}, {args.planted} planted copies at cosine 0.93-0.99, threshold "
          f"{summary['threshold']}: recall {recall:.4f}, precision {precision:.4f} ({len(found)} found, "
          f"{summary['search']})", flush=True)
    print(f"time: leaks {leak_s:.1f} s (peak RSS {leak_rss:.0f} MB) vs dedup on the union of {args.a + args.b} "
          f"{dedup_s:.1f} s (peak RSS {dedup_rss:.0f} MB, {dedup['search']['index']}): {leak_s / dedup_s:.2f}x "
          f"(target <= 1.2x; process starts included)", flush=True)
    ok = recall >= 0.95 and precision >= 0.95 and leak_s <= 1.2 * dedup_s
    print("targets met" if ok else "TARGETS MISSED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
