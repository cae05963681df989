"""Search inside images on a planted set, through the product itself (``byol-embed run --regions``, ``index``,
``search --regions``, ``shared``), against whole-image search (``avgpool``) on the same queries.

    python benchmarks/regions.py                         # 600 photos, 4 objects planted in 15 each
    python benchmarks/regions.py --images 300 --per-object 10 --models test

The set (tests/support/planted.py): crops, flips and colour shifts of the photos that ship with scikit-image and
scikit-learn, 320x240, with one of four objects pasted into ``--per-object`` of them (a drawn logo, a drawn label
with text, a crop of scikit-image's coins and of its cameraman) at 5-20 % of the image's area, at a random place
and scale. Queries: each object on its own (``--image object.png``), and a box around it in one photo that holds it
(``--image photo.jpg --box ...``; that photo left out of its results).

Printed per model: recall@10 (of min(10, the images holding it)) and mAP of the images holding the object, region
search against whole-image search on the same queries; the run's extra cost with ``--regions`` (the same run
without, timed in this process); and the shared parts' precision and recall on the planted pairs (two photos
holding the same object, cropped from different photos) against whole-image dedup's on the same pairs (pairs
cropped from the same photo share content for real and are left out of both).

Models: the demo model (``scripts/serve.py``'s, made if missing) and the test suite's trained model (3 epochs on
18 images), each at its own input size (the demo sees 96², the test model 64²) and the same weights seen at 224²
(saved again with another preprocessing): at a small input the region layer's grid is coarse (feature4 is 6x6 at
96², 4x4 at 64²) and a 5-20 % part covers a cell or two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hub.hardware import cpu_summary  # noqa: E402
from service.embed.cli import main as embed  # noqa: E402
from service.embed.index import LoadedIndex  # noqa: E402
from service.embed.model import FolderModel  # noqa: E402
from service.embed.region_index import LoadedRegionIndex  # noqa: E402
from tests.support.models import seen_at  # noqa: E402
from tests.support.planted import planted_set, write_planted  # noqa: E402


def _scores(truth: np.ndarray, ranked: list[int], total: int) -> tuple[float, float]:
    """recall@10 of min(10, positives) and average precision over a ranking (images not ranked: last)."""
    rest = [i for i in range(total) if i not in set(ranked)]
    hits = truth[np.array(ranked + rest, int)]
    recall = hits[:10].sum() / min(10, truth.sum())
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(recall), float((precision * hits).sum() / hits.sum())


def measure(name: str, model: Path, layer: str, root: Path, work: Path, holds: np.ndarray, boxes, sources) -> dict:
    images = root / "images"
    n = len(holds)
    plain, emb = work / f"{name}-plain", work / f"{name}-regions"
    timings: dict[str, list[float]] = {"without": [], "with": []}
    for attempt in range(2):  # the first of each exports its graph (and warms the caches): the second is timed
        for kind, extra in (("without", []), ("with", ["--regions", layer])):
            out = (plain if kind == "without" else emb) if attempt else work / f"{name}-{kind}-warm"
            started = time.perf_counter()
            assert embed(["run", "--model", str(model), "--input", str(images), "--output", str(out),
                          "--no-progress", *extra]) == 0
            timings[kind].append(time.perf_counter() - started)
    without, with_regions = timings["without"][-1], timings["with"][-1]
    assert embed(["index", str(emb)]) == 0
    regions, whole = LoadedRegionIndex.open(emb), LoadedIndex.open(emb)
    folder_model = FolderModel(regions.manifest, maps=(layer,), store=None)
    position = {f"{i:04d}.jpg": i for i in range(n)}
    from PIL import Image

    rows: dict[str, list] = {"object alone": [], "box in a photo": []}
    for k in range(4):
        truth = holds == k
        obj = Image.open(root / f"object{k}.png").convert("RGB")
        found = regions.search(folder_model.region_parts(obj, None), n, candidates=int(regions.index.ntotal))
        plain_hits = whole.search(folder_model.embed([obj], "avgpool"), n)
        rows["object alone"].append((*_scores(truth, [position[r["id"]] for r in found], n),
                                     *_scores(truth, [position[r["id"]] for r in plain_hits], n)))
        j = int(np.flatnonzero(truth)[0])
        photo = Image.open(images / f"{j:04d}.jpg").convert("RGB")
        keep = np.arange(n) != j
        found = regions.search(folder_model.region_parts(photo, boxes[j]), n, exclude=f"{j:04d}.jpg",
                               candidates=int(regions.index.ntotal))
        plain_hits = whole.search(folder_model.embed([photo], "avgpool"), n, exclude=f"{j:04d}.jpg")
        shift = lambda i, j=j: i - (i > j)  # noqa: E731 (positions once the query photo is left out)
        rows["box in a photo"].append((
            *_scores(truth[keep], [shift(position[r["id"]]) for r in found], n - 1),
            *_scores(truth[keep], [shift(position[r["id"]]) for r in plain_hits], n - 1)))
    out = {"name": name, "layer": layer, "grid": regions.meta["grid"], "windows": regions.meta["windows"],
           "seconds_without": round(without, 1), "seconds_with": round(with_regions, 1)}
    for kind, got in rows.items():
        r = np.array(got)
        out[kind] = {"recall@10": round(r[:, 0].mean(), 3), "mAP": round(r[:, 1].mean(), 3),
                     "whole recall@10": round(r[:, 2].mean(), 3), "whole mAP": round(r[:, 3].mean(), 3),
                     "per object": [round(float(v), 2) for v in r[:, 0]]}
    out["shared"] = shared_pairs(emb, holds, sources, whole)
    return out


def cost(model: Path, layer: str, work: Path, images: int) -> tuple[float, float, str]:
    """The same run without and with ``--regions`` on ``images`` planted photos (after the graphs are exported):
    seconds of each, and the line the run with regions printed."""
    import contextlib
    import io

    write_planted(work / "cost-set", images, 10)
    seconds = []
    printed = ""
    for kind, extra in (("without", []), ("with", ["--regions", layer])):
        out = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            assert embed(["run", "--model", str(model), "--input", str(work / "cost-set" / "images"), "--output",
                          str(work / f"cost-{kind}"), "--no-progress", *extra]) == 0
        seconds.append(time.perf_counter() - started)
        printed = out.getvalue().strip().splitlines()[-1]
    return seconds[0], seconds[1], printed


def shared_pairs(emb: Path, holds: np.ndarray, sources: np.ndarray, whole: LoadedIndex) -> dict:
    """Precision and recall of ``byol-embed shared`` (calibrated) and of whole-image dedup at its threshold on the
    planted pairs."""
    import pyarrow.parquet as pq

    assert embed(["shared", str(emb), "--no-progress"]) == 0
    summary = json.loads((emb / "curation" / "shared_parts.json").read_text())
    table = pq.read_table(emb / "curation" / "shared_parts.parquet").to_pydict()
    n = len(holds)
    same_object = (holds[:, None] >= 0) & (holds[:, None] == holds[None, :])
    same_photo = sources[:, None] == sources[None, :]
    positive = same_object & ~same_photo
    negative = ~same_object & ~same_photo
    upper = np.triu(np.ones((n, n), bool), 1)

    def rates(pairs: set[tuple[int, int]]) -> dict:
        tp = sum(positive[a, b] for a, b in pairs)
        fp = sum(negative[a, b] for a, b in pairs)
        return {"pairs": len(pairs), "precision": round(float(tp / max(1, tp + fp)), 3),
                "recall": round(float(tp / max(1, int((positive & upper).sum()))), 3)}

    found = {tuple(sorted((int(a[:4]), int(b[:4])))) for a, b in zip(table["id"], table["id_b"])}
    order = np.argsort([int(i[:4]) for i in whole.ids])
    vectors = np.stack([whole.index.reconstruct(int(r)) for r in order])
    cos = vectors @ vectors.T
    from curation.calibration import DEFAULT_THRESHOLD

    dedup = {(a, b) for a, b in zip(*np.nonzero((cos >= DEFAULT_THRESHOLD) & upper))}
    return {"threshold": summary["threshold"], "calibration": {k: summary["calibration"].get(k) for k in (
            "precision", "recall", "separable")}, "regions": rates(found), "whole-image dedup": rates(dedup),
            "dedup threshold": DEFAULT_THRESHOLD}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="photos in the set (default 600)")
    parser.add_argument("--per-object", type=int, default=15, help="photos holding each object (default 15)")
    parser.add_argument("--models", default="demo,test", help="demo, test or both (default demo,test)")
    parser.add_argument("--layer", default="feature3", help="the region layer (default feature3)")
    parser.add_argument("--cost-images", type=int, default=3000,
                        help="photos of the run timed with and without --regions, with the last model (default "
                             "3000; 0: skip)")
    args = parser.parse_args()
    print(f"machine: {cpu_summary()}")
    with tempfile.TemporaryDirectory(prefix="byol-regions-") as tmp:
        work = Path(tmp)
        holds, boxes = write_planted(work / "set", args.images, args.per_object)
        sources = planted_set(args.images, args.per_object, with_backgrounds=True)[4]
        print(f"{args.images} photos, 4 objects in {args.per_object} photos each; region layer {args.layer}")
        models: list[tuple[str, Path]] = []
        if "demo" in args.models:
            sys.path.insert(0, str(REPO / "scripts"))
            from serve import demo_folder, make_demo_model

            if not (demo_folder() / "config.json").exists():
                make_demo_model(demo_folder())
            models += [("demo (96²)", demo_folder()), ("demo at 224²", seen_at(demo_folder(), work / "demo224", 224))]
        if "test" in args.models:
            from tests.support.images import PHOTOS, skimage_data_dir
            from tests.support.models import train_test_model

            (work / "trained").mkdir()
            trained = train_test_model(work / "trained", [skimage_data_dir() / p for p in PHOTOS])
            models += [("test (64²)", trained), ("test at 224²", seen_at(trained, work / "test224", 224))]
        results = []
        for name, folder in models:
            r = measure(name.split()[0] + name.split()[-1].rstrip("²"), folder, args.layer, work / "set", work, holds,
                        boxes, sources)
            r["name"] = name
            results.append(r)
            print(f"\n{name}: {args.layer} is a {r['grid']}x{r['grid']} grid, {r['windows']} windows an image")
            for kind in ("object alone", "box in a photo"):
                m = r[kind]
                ratio = (f"{m['recall@10'] / m['whole recall@10']:.1f}x" if m["whole recall@10"] else
                         "whole image found none")
                print(f"  {kind:>14}: recall@10 {m['recall@10']:.2f} vs whole image {m['whole recall@10']:.2f} "
                      f"({ratio}); mAP {m['mAP']:.2f} vs {m['whole mAP']:.2f}; per object {m['per object']}")
            extra = r["seconds_with"] / r["seconds_without"] - 1
            print(f"  run: {r['seconds_without']} s without regions, {r['seconds_with']} s with: {100 * extra:+.0f} % "
                  "(a first run: the codec's fit on a sample of the images included)")
            s = r["shared"]
            print(f"  shared parts (calibrated cosine {s['threshold']}, composites {s['calibration']}): "
                  f"{s['regions']}; whole-image dedup at {s['dedup threshold']}: {s['whole-image dedup']}")
        if args.cost_images and models:
            name, folder = models[-1]
            without, with_regions, line = cost(folder, args.layer, work, args.cost_images)
            print(f"\nthe run's extra cost on {args.cost_images} photos ({name}): {without:.1f} s without regions, "
                  f"{with_regions:.1f} s with: {100 * (with_regions / without - 1):+.1f} %\n  it printed: {line}")


if __name__ == "__main__":
    main()
