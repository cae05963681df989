"""Curation at scale and its quality: ``byol-embed dedup`` / ``outliers`` on synthetic vectors and on real photos.

    python benchmarks/curate.py                       # 100 k and 1 M vectors of dim 512 with planted duplicates
    python benchmarks/curate.py --sizes 100000        # one size
    python benchmarks/curate.py --quality MODEL_DIR   # near-duplicate copies of real photos: precision/recall per T

Scale: vectors on the unit sphere (a mixture of clusters, like real embeddings) with planted duplicate groups
(2-4 members, cosine 0.93-0.99 to their source) are written as an embedding folder (the same shards as
``byol-embed run``), then ``dedup`` runs on it. Printed: time, peak RSS (the process's high-water mark, and as a
multiple of the float32 matrix), and the recall of the planted pairs, against exact search on a 50 k subset
(the same planted pairs found by brute force there), beside the CPU's flags. Targets on 2 cores: 1 M in <= 10
minutes, peak RSS <= 3x the matrix, recall >= 0.95.

Quality: copies of scikit-image's photos (JPEG quality 20, halved, cropped to 90 %, brightness +-10 %) mixed with
the distinct photos, embedded with MODEL_DIR; pair precision and recall of ``dedup`` for a sweep of thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.images import make_near_duplicate_fixture, pair_scores, photos_for_quality  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def planted_vectors(n: int, dim: int, *, groups_fraction: float = 0.05, seed: int = 0):
    """``(n, dim)`` float32 unit vectors from 256 clusters, with duplicate groups planted: returns the vectors and
    the planted pairs (rows of the same group)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    block = 65536
    for start in range(0, n, block):  # a unit cluster centre plus as much spread: cosines within a cluster ~0.5
        stop = min(n, start + block)
        out[start:stop] = centers[rng.integers(0, 256, stop - start)]
        out[start:stop] += rng.standard_normal((stop - start, dim)).astype(np.float32) / np.sqrt(dim)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    pairs = []
    row = 0
    budget = int(n * groups_fraction)
    while budget > 0 and row < n - 4:
        size = int(rng.integers(2, 5))
        source = row
        for m in range(1, size):
            target = 0.93 + 0.06 * rng.random()  # cosine to the source
            noise = rng.standard_normal(dim).astype(np.float32)
            noise -= (noise @ out[source]) * out[source]
            noise /= np.linalg.norm(noise)
            out[source + m] = target * out[source] + np.sqrt(1 - target**2) * noise
        members = list(range(source, source + size))
        pairs += [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
        budget -= size
        row += size + int(rng.integers(20, 200))  # groups scattered through the folder
    return out, pairs


def write_folder(folder: Path, vectors: np.ndarray, shard_size: int = 100_000, prefix: str = "img") -> None:
    """An embedding folder as `byol-embed run` writes it (its first generation: plan, shards, done markers, the
    committed manifest), around ``vectors``; ids ``<prefix><row>``."""
    from storage.folder import Manifest, ShardRows, commit_generation, plan_shards, prepare_folder, write_shard

    n, dim = vectors.shape
    manifest = Manifest(model_id="synthetic", revision="sha256:0", weights_sha256="0" * 64, architecture="resnet18",
                        layers=["avgpool"], pooling="gap", normalize=True, dtype="float32",
                        dims={"avgpool": dim}, preprocessing={}, input=str(folder / "none"), input_kind="folder",
                        input_fingerprint="synthetic", input_count=n, shard_size=shard_size,
                        shards=plan_shards(n, shard_size), decode="exact", generation=1,
                        work={"rewrites": [], "removed_parts": []})
    folder.mkdir(parents=True, exist_ok=True)
    prepare_folder(folder, manifest)
    for shard in manifest.shards:
        s, e = shard["start"], shard["stop"]
        ids = [f"{prefix}{i:08d}" for i in range(s, e)]
        write_shard(folder, manifest, ShardRows(shard["index"], ids, ids, [None] * (e - s),
                                                {"avgpool": vectors[s:e]}, [f"{prefix}{i:061x}" for i in range(s, e)]))
    commit_generation(folder, manifest)


def recall_of(folder: Path, pairs: list[tuple[int, int]]) -> float:
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "curation" / "duplicates.parquet", columns=["group", "id"]).to_pydict()
    group = {int(i[3:]): g for g, i in zip(table["group"], table["id"])}
    found = sum(1 for a, b in pairs if a in group and group.get(b) == group[a])
    return found / max(1, len(pairs))


def scale(sizes: list[int], dim: int, subset: int) -> None:
    from curation.dedup import dedup

    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            vectors, pairs = planted_vectors(n, dim)
            folder = Path(tmp) / "emb"
            write_folder(folder, vectors)
            matrix_mb = vectors.nbytes / 2**20
            del vectors
            # `byol-embed dedup` itself, in a process of its own: its peak RSS is its own (os.wait4's rusage)
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "service.embed", "dedup", str(folder), "--threshold", "0.9",
                                     "--json", "--no-progress"], stdout=subprocess.PIPE, cwd=REPO)
            stdout = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"dedup failed ({proc.returncode})")
            summary = json.loads(stdout)
            peak = usage.ru_maxrss / 1024
            recall = recall_of(folder, pairs)
            print(f"n={n:>8} dim={dim}: {seconds:7.1f} s (process start included), {summary['search']}, peak RSS "
                  f"{peak:.0f} MB = {peak / matrix_mb:.2f}x the {matrix_mb:.0f} MB float32 matrix, recall of "
                  f"{len(pairs)} planted pairs {recall:.4f}, {summary['groups']} groups", flush=True)
            # exact search on a subset: the same planted pairs, found by brute force (the reference for recall)
            sub_vectors, sub_pairs = planted_vectors(min(subset, n), dim)
            sub = Path(tmp) / "sub"
            write_folder(sub, sub_vectors)
            exact = dedup(sub, threshold=0.9, exact_limit=10**9, progress=False)
            exact_recall = recall_of(sub, sub_pairs)
            approx = dedup(sub, threshold=0.9, exact_limit=0, progress=False)
            approx_recall = recall_of(sub, sub_pairs)
            print(f"  subset of {len(sub_vectors)}: recall exact {exact_recall:.4f} ({exact['search']['index']}) vs "
                  f"IVF {approx_recall:.4f} ({approx['search']}): {approx_recall / max(exact_recall, 1e-9):.3f}x "
                  "of exact", flush=True)


def quality(model: str) -> None:
    import skimage

    from curation.dedup import dedup

    photos = photos_for_quality(Path(skimage.__file__).parent / "data")
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        sources = make_near_duplicate_fixture(photos, images)
        out = Path(tmp) / "emb"
        subprocess.run([sys.executable, "-m", "service.embed", "run", "--model", model, "--input", str(images),
                        "--output", str(out), "--no-progress"], check=True, capture_output=True)
        print(f"{len(photos)} photos + {len(sources)} copies, model {model}")
        print("threshold  precision  recall")
        for t in (0.80, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.90, 0.92, 0.94):
            dedup(out, threshold=t)
            p, r = pair_scores(out / "curation" / "duplicates.parquet", sources)
            print(f"{t:9.2f}  {p:9.3f}  {r:6.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="vector counts")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (default 512)")
    parser.add_argument("--subset", type=int, default=50_000, help="exact-search reference size (default 50000)")
    parser.add_argument("--quality", metavar="MODEL_DIR", default=None,
                        help="instead: near-duplicate precision/recall per threshold on copies of real photos")
    args = parser.parse_args()
    from hub.hardware import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    if args.quality:
        quality(args.quality)
    else:
        scale(args.sizes, args.dim, args.subset)
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
