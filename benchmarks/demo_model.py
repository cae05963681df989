"""The demo model, a newcomer's first impression: its recipe against the short-budget one, in the same time.

    python benchmarks/demo_model.py               # both recipes, then dedup and copy retrieval on held-out images
    python benchmarks/demo_model.py --variant fast=--cpu-precision,auto,--decode-cache-mb,256,--epochs,400
                                                  # and the demo's recipe with these overrides, in the same time

Both are trained on the 48 demo photos that ``scripts/serve.py`` uses (scikit-image's, with crops, flips and
rotations), as whole processes: first the demo's recipe (``scripts/serve.demo_arguments``: the ``smoke`` preset at
96² for 40 epochs), timed; then ``byol_r18_short`` at 96² with that same wall time as its budget, and each
``--variant``: the demo's arguments with its overrides, with that same budget.

Held-out images: each of up to 25 photos of scikit-image as an original and four near-duplicate copies (JPEG quality
20, halved, cropped to 90 %, brightness +-10 %), among 12 distinct crops of each of the same photos (scikit-image 0.26
has 20 such photos: 340 images). Printed, on each model's ``avgpool`` vectors: the best pair F1 over cosine
thresholds (a pair is a duplicate when both come from one original), and the copy retrieval top-1 (each copy's
nearest other image is of its original), beside the CPU's capabilities.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from tests.support import processes  # noqa: E402

SHORT = ["--config", "byol_r18_short", "--image-size", "96", "--eval-resize", "110", "--export-onnx",
         "--keep-checkpoints", "1", "--log-every", "6", "--demo"]


def held_out(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The held-out images and each one's group (its original's number; -1 for a distinct crop)."""
    from benchmarks.learning import photos
    from tests.support.images import make_near_duplicate_fixture

    chosen = [img for _, img in photos()[:25]]
    for img in chosen:
        img.thumbnail((320, 320))
    sources = make_near_duplicate_fixture(chosen, folder)
    rng = np.random.default_rng(3)
    for i, photo in enumerate(chosen):
        w, h = photo.size
        for j in range(12):
            cw, ch = int(w * rng.uniform(0.3, 0.5)), int(h * rng.uniform(0.3, 0.5))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            photo.crop((x, y, x + cw, y + ch)).save(folder / f"crop_{i:02d}_{j:02d}.jpg", quality=90)
    paths = sorted(folder.glob("*.jpg"))
    group_of = {orig: int(orig[5:7]) for orig in set(sources.values())}
    group_of.update({copy: group_of[orig] for copy, orig in sources.items()})
    return paths, np.array([group_of.get(p.name, -1) for p in paths])


def scores(model_dir: Path, paths: list[Path], groups: np.ndarray) -> dict[str, float]:
    from hub import BYOLModel
    from training.evaluation.features import features_of

    model = BYOLModel.from_pretrained(model_dir).eval()
    x = features_of(model, paths, ("avgpool",), "gap")["avgpool"]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    iu = np.triu_indices(len(x), 1)
    truth = (groups[iu[0]] == groups[iu[1]]) & (groups[iu[0]] >= 0)
    values = sims[iu]
    order = np.argsort(-values)
    hits = np.cumsum(truth[order])
    predicted = np.arange(1, len(order) + 1)
    f1 = 2 * hits / (predicted + truth.sum())
    best = int(np.argmax(f1))
    np.fill_diagonal(sims, -np.inf)
    copies = np.where(groups >= 0)[0]
    nearest = sims[copies].argmax(1)
    return {"best_pair_f1": round(float(f1[best]), 3), "at_cosine": round(float(values[order[best]]), 3),
            "copy_top1": round(100 * float((groups[nearest] == groups[copies]).mean()), 1)}


def train(args: list[str]) -> tuple[float, int]:
    """Wall seconds of the whole process, and its optimizer steps."""
    import yaml

    t0 = time.monotonic()
    processes.run([sys.executable, str(REPO / "training" / "pretrain.py"), *args], check=True, cwd=REPO)
    wall = time.monotonic() - t0
    record = yaml.safe_load((Path(args[args.index("--output") + 1]) / "config.yaml").read_text())
    return wall, (record.get("time_budget") or {}).get("done_steps") or record["total_steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=--FLAG,VALUE",
                        help="also the demo's recipe with these overrides, budgeted to the demo's wall time "
                             "(repeatable), e.g. bf16=--cpu-precision,auto,--epochs,400")
    parser.add_argument("--no-short", action="store_true", help="skip byol_r18_short")
    args = parser.parse_args()
    from serve import demo_arguments, write_demo_photos

    from benchmarks.learning import parse_variant
    from hub.hardware import cpu_summary

    variants = [parse_variant(v) for v in args.variant]

    cpu = cpu_summary()
    print(f"CPU: {cpu}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="demo-model-"))
    os.environ["BYOL_CACHE"] = str(tmp / "cache")
    try:
        photos = tmp / "photos"
        photos.mkdir()
        write_demo_photos(photos)
        paths, groups = held_out(tmp / "held-out")
        demo_s, demo_steps = train(demo_arguments(photos, tmp / "demo"))
        table = {"demo (smoke, 40 epochs)": (demo_s, demo_steps, scores(tmp / "demo" / "final", paths, groups))}
        if not args.no_short:
            short_s, short_steps = train([*SHORT, "--data", str(photos), "--output", str(tmp / "short"), "--time-budget-min",
                             str(demo_s / 60)])
            table["byol_r18_short"] = (short_s, short_steps, scores(tmp / "short" / "final", paths, groups))
        for name, extra in variants:
            wall, steps = train([*demo_arguments(photos, tmp / name), "--time-budget-min", str(demo_s / 60), *extra])
            table[name] = (wall, steps, scores(tmp / name / "final", paths, groups))
        print(f"\ndemo model: 48 photos at 96²; {len(paths)} held-out images ({(groups >= 0).sum()} originals and "
              f"copies of {len(set(groups[groups >= 0]))} photos, {(groups < 0).sum()} distinct crops); CPU: {cpu}")
        print(f"{'recipe':<28}{'wall s':>8}{'steps':>7}{'best pair F1':>14}{'at cosine':>11}{'copy top-1':>12}")
        for name, (wall, steps, s) in table.items():
            print(f"{name:<28}{wall:>8.0f}{steps:>7}{s['best_pair_f1']:>14.3f}{s['at_cosine']:>11.3f}{s['copy_top1']:>12.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    with processes.interruptible():
        main()
