"""``byol-embed import`` at scale: N x D vectors from Parquet and from NumPy into an embedding folder.

    python benchmarks/import_vectors.py                    # 1 000 000 x 512 (2 GB of float32), both formats
    python benchmarks/import_vectors.py --rows 200000

Each import runs as its own process (``python -m service.embed import``); printed: its time, its peak RSS (the
child's maximum resident set, from the kernel) against the vectors' own size, with the CPU's capabilities. The
import streams a record batch (Parquet, pre-buffering off) or a read of the .npy (NumPy) at a time into shards of
50 000 vectors, so its memory is a shard's and the ids', not the vectors'.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_inputs(root: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    vectors = np.lib.format.open_memmap(root / "v.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    writer = None
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        vectors[start:start + len(block)] = block
        ids = [f"img/{i:08d}.jpg" for i in range(start, start + len(block))]
        table = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), dim)})
        writer = writer or pq.ParquetWriter(root / "v.parquet", table.schema)
        writer.write_table(table, row_group_size=10_000)
    writer.close()
    vectors.flush()
    np.save(root / "ids.npy", np.array([f"img/{i:08d}.jpg" for i in range(rows)]))


def run(argv: list[str]) -> tuple[float, float]:
    """Seconds and the child's peak RSS in MB (polled every 20 ms)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "service.embed", "import", *argv], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak = 0
    try:
        child = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, child.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"import failed: {err.decode()[-2000:]}")
    return time.perf_counter() - started, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    from hub.hardware import cpu_summary

    print(f"machine: {cpu_summary()}")
    size_mb = args.rows * args.dim * 4 / 2**20
    with tempfile.TemporaryDirectory(prefix="byol-import-") as tmp:
        root = Path(tmp)
        make_inputs(root, args.rows, args.dim)
        for name, argv in (("numpy", [str(root / "v.npy"), "--ids", str(root / "ids.npy"), "--output",
                                      str(root / "emb-npy")]),
                           ("parquet", [str(root / "v.parquet"), "--output", str(root / "emb-parquet")])):
            seconds, peak = run(argv)
            print(f"{name:>8}: {args.rows} x {args.dim} ({size_mb:.0f} MB of float32) in {seconds:.1f} s "
                  f"({args.rows / seconds:,.0f} vectors/s), peak RSS {peak:.0f} MB = {peak / size_mb:.2f} x the "
                  "vectors")


if __name__ == "__main__":
    main()
