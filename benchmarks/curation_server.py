"""The server paging a million rows: its memory and ``/health`` while every curation tab is paged.

    python benchmarks/curation_server.py                       # this checkout, 1 M rows in every table
    python benchmarks/curation_server.py --before REF          # and the same on git REF (a worktree), in one run
    python benchmarks/curation_server.py --rows 200000

A small real folder is embedded (photos that ship with scikit-image, the tests' trained model) and curated by the
checkout's own commands; then every curation table is made ``--rows`` rows long by repeating the rows the commands
wrote (ids made unique), written the way that checkout's commands write them: a checkout with the results
contract (curation/results.py) through its writer (row groups, the duplicate groups table, the map's sample with
labels and flags joined); an older one with ``pyarrow.parquet.write_table``. A real ``byol-serve`` process of that
checkout serves the folder; the requests: the first page and a page in the middle of the outliers and of the
duplicate groups, the removal list where there is one, the map. Printed: the server's RSS before them, its peak
while they run and after, and ``/health``'s latency (polled every 20 ms) meanwhile, with the CPU's capabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import processes  # noqa: E402
from tests.support.images import (  # noqa: E402
    PHOTOS,
    make_near_duplicate_fixture,
    photos_for_quality,
    skimage_data_dir,
)
from tests.support.server import free_port  # noqa: E402

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def run_cli(tree: Path, *argv: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-m", "service.embed", *argv], cwd=tree, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed in {tree}:\n{proc.stderr[-2000:]}")


def make_folder(tree: Path, model: Path, root: Path) -> Path:
    images, out = root / "images", root / "emb"
    photos = photos_for_quality(skimage_data_dir())
    make_near_duplicate_fixture(photos[:6], images / "photos")
    make_near_duplicate_fixture(photos[6:], images / "more")
    (images / "odd").mkdir()
    (images / "odd" / "broken.jpg").write_bytes(b"not an image")
    for argv in (["run", "--model", str(model), "--input", str(images), "--output", str(out), "--no-progress",
                  "--labels", "folders"], ["index", str(out)],
                 ["dedup", str(out), "--no-progress", "--threshold", "0.86"], ["outliers", str(out), "--no-progress"],
                 ["quality", str(out), "--no-progress"], ["labels", str(out), "--no-progress"],
                 ["map", str(out), "--no-progress", "--clusters", "3"]):
        run_cli(tree, *argv)
    return out


def repeat(table: pa.Table, rows: int, unique: tuple[str, ...] = ("id",)) -> pa.Table:
    """``table`` repeated to ``rows`` rows, the ``unique`` columns suffixed with the copy's number."""
    copies = -(-rows // max(1, table.num_rows))
    index = np.tile(np.arange(table.num_rows), copies)[:rows]
    copy_no = np.repeat(np.arange(copies), table.num_rows)[:rows].astype(str)
    out = table.take(index)
    for name in unique:
        if name in out.column_names:
            values = np.char.add(np.char.add(np.asarray(out.column(name).to_pylist(), dtype=str), "#"), copy_no)
            out = out.set_column(out.column_names.index(name), name, pa.array(values.tolist(), pa.string()))
    return out


def inflate(folder: Path, rows: int, contract: bool) -> None:
    curation = folder / "curation"
    outliers = pq.read_table(curation / "outliers.parquet")
    duplicates = pq.read_table(curation / "duplicates.parquet")
    groups = duplicates.column("group").to_numpy()
    copies = -(-rows // duplicates.num_rows)
    big = repeat(duplicates, rows, ("id", "representative"))
    renumbered = (np.tile(groups, copies)[:rows] + np.repeat(np.arange(copies), len(groups))[:rows]
                  * (groups.max() + 1))
    big = big.set_column(big.column_names.index("group"), "group", pa.array(renumbered, pa.int64()))
    tables = {"outliers": repeat(outliers, rows), "duplicates": big,
              "map": repeat(pq.read_table(curation / "map.parquet"), rows),
              "quality": repeat(pq.read_table(curation / "quality.parquet"), rows),
              "labels": repeat(pq.read_table(curation / "labels.parquet"), rows)}
    if not contract:
        for name, table in tables.items():
            pq.write_table(table, curation / f"{name}.parquet", compression="zstd")
        return
    sys.path.insert(0, str(REPO))
    from curation.map import sample_rows
    from curation.results import write_result

    for name, table in tables.items():
        write_result(folder, name, table, None)
    kept = big.column("id")  # the first member of each group (the representative's row comes first)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(renumbered)) + 1])
    sizes = np.diff(np.concatenate([starts, [rows]]))
    exact = np.add.reduceat((np.asarray(big.column("kind").to_pylist()) == "exact").astype(np.int64), starts)
    write_result(folder, "duplicate_groups", {
        "group": renumbered[starts], "representative": big.column("representative").take(starts),
        "kept": kept.take(starts), "size": sizes, "exact": exact, "first": starts}, None)
    mapped = tables["map"]
    shown = sample_rows(rows)
    label = dict(zip(tables["labels"].column("id").to_pylist(), tables["labels"].column("label").to_pylist()))
    reasons = dict(zip(tables["quality"].column("id").to_pylist(), tables["quality"].column("reasons").to_pylist()))
    ids = mapped.column("id").take(shown).to_pylist()
    write_result(folder, "map_sample", {
        "id": ids, "x": mapped.column("x").take(shown), "y": mapped.column("y").take(shown),
        "cluster": mapped.column("cluster").take(shown), "label": [label.get(i) for i in ids],
        "flag": [", ".join(reasons.get(i) or []) or None for i in ids]}, None)
    summary = json.loads((curation / "map.json").read_text())
    (curation / "map.json").write_text(json.dumps({**summary, "embedded": rows, "sample": len(shown)}))


def measure(tree: Path, model: Path, folder: Path, middle: int) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "MALLOC_ARENA_MAX": "2"}
    log = open(folder.parent / f"serve-{tree.name}.log", "wb")
    proc = processes.start([sys.executable, "-m", "service.server.cli", "--model", str(model), "--port", str(port),
                            "--index", str(folder), "--api-keys", KEY, "--index-poll-s", "0"], cwd=tree, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the server of {tree} did not start: see {log.name}")
            time.sleep(0.3)
        process = psutil.Process(proc.pid)
        time.sleep(1.0)
        before = process.memory_info().rss
        peak = [before]
        health: list[float] = []
        done = threading.Event()

        def watch() -> None:
            with httpx.Client() as client:
                while not done.is_set():
                    peak[0] = max(peak[0], process.memory_info().rss)
                    started = time.perf_counter()
                    client.get(url + "/health", timeout=30)
                    health.append(time.perf_counter() - started)
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        paths = ["/curation/outliers?limit=1", f"/curation/outliers?offset={middle}&limit=50",
                 "/curation/duplicates?limit=1", f"/curation/duplicates?offset={middle // 8}&limit=10",
                 "/curation/map", "/curation/duplicates/remove"]
        statuses = {}
        started = time.perf_counter()
        with httpx.Client(headers=AUTH, timeout=300) as client:
            for path in paths:
                t0 = time.perf_counter()
                r = client.get(url + path)
                statuses[path] = (r.status_code, round(time.perf_counter() - t0, 3), len(r.content))
        took = time.perf_counter() - started
        time.sleep(0.5)
        done.set()
        watcher.join()
        after = process.memory_info().rss
        return {"rss_before_mb": before / 2**20, "rss_peak_mb": peak[0] / 2**20, "rss_after_mb": after / 2**20,
                "health_max_ms": 1000 * max(health), "health_p99_ms": 1000 * float(np.quantile(health, 0.99)),
                "health_checks": len(health), "pages_s": took, "statuses": statuses}
    finally:
        processes.stop(proc, timeout=30)
        log.close()


def bench(tree: Path, model: Path, rows: int, work: Path) -> dict:
    root = work / tree.name
    root.mkdir(parents=True)
    folder = make_folder(tree, model, root)
    contract = (tree / "curation" / "results.py").is_file()
    inflate(folder, rows, contract)
    return measure(tree, model, folder, rows // 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in every curation table (default 1000000)")
    parser.add_argument("--before", default=None, metavar="REF", help="also measure git REF (e.g. a commit before "
                        "the results contract) in a worktree, in the same run")
    parser.add_argument("--model", default=None, help="a model folder with model.onnx (default: the tests' trained "
                        "model, made here in about 30 s)")
    args = parser.parse_args()
    from hub.hardware import cpu_summary

    print(f"machine: {cpu_summary()}")
    with tempfile.TemporaryDirectory(prefix="byol-bench-") as tmp:
        work = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            from tests.support.models import train_test_model

            model = train_test_model(work, [skimage_data_dir() / name for name in PHOTOS])
        trees = [("after", REPO)]
        if args.before:
            before = work / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True,
                           capture_output=True)
            trees.insert(0, ("before", before))
        results = {}
        try:
            for name, tree in trees:
                results[name] = bench(tree, model, args.rows, work / "runs")
                r = results[name]
                print(f"{name:>6}: RSS {r['rss_before_mb']:.0f} MB before, peak {r['rss_peak_mb']:.0f} MB "
                      f"(+{r['rss_peak_mb'] - r['rss_before_mb']:.0f} MB), {r['rss_after_mb']:.0f} MB after; /health "
                      f"max {r['health_max_ms']:.1f} ms, p99 {r['health_p99_ms']:.1f} ms over {r['health_checks']} "
                      f"checks; pages in {r['pages_s']:.2f} s")
                for path, (status, seconds, size) in r["statuses"].items():
                    print(f"        {status} {seconds:>7.3f} s {size:>10} B  {path}")
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "before")], cwd=REPO,
                               capture_output=True)
        if "before" in results:
            b, a = results["before"], results["after"]
            print(f"peak RSS growth: {b['rss_peak_mb'] - b['rss_before_mb']:.0f} MB before, "
                  f"{a['rss_peak_mb'] - a['rss_before_mb']:.0f} MB after; /health max "
                  f"{b['health_max_ms']:.0f} ms before, {a['health_max_ms']:.0f} ms after")
        shutil.rmtree(work / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
