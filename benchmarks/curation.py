"""Curation beyond duplicates, measured against the tools people use, on the same images and the same vectors.

    python benchmarks/curation.py --all                  # everything below (the demo model: scripts/serve.py makes it)
    python benchmarks/curation.py --dedup                # calibrated threshold vs the fixed one; outlier ranks
    python benchmarks/curation.py --labels               # mislabel AUROC: ours vs cleanlab (find_label_issues, Datalab)
    python benchmarks/curation.py --quality              # quality flags: ours vs CleanVision, recall and FPR
    python benchmarks/curation.py --select               # linear probe on a diverse 10 % vs a random 10 %, 3 seeds
    python benchmarks/curation.py --scale 1000000        # labels / select / map time at n x 512 against dedup's

Labelled sets (10 % of labels flipped at random to another class): scikit-learn's digits (1797 8x8 images,
upsampled to 64 x 64 RGB) and crops of scikit-image's photos labelled by photo (8 classes x 40 crops), embedded by
the demo model through `byol-embed run`. cleanlab gets the same vectors: ``find_label_issues`` on out-of-fold
probabilities of a logistic regression (5 folds, its documented recipe), and Datalab with the vectors as
``features`` (its kNN label issues). Quality: the photos' crops as the clean set, and copies of them made dark,
overexposed, blurred, low-information and squeezed; CleanVision's Imagelab on the same files. Peers come from the
``bench`` extra (pip install -e '.[bench]').
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

from tests.support.images import make_near_duplicate_fixture, pair_scores, photos_for_quality, skimage_data_dir  # noqa: E402

FLIP = 0.10


def demo_model() -> str:
    sys.path.insert(0, str(REPO / "scripts"))
    from serve import demo_folder, make_demo_model

    folder = demo_folder()
    if not (folder / "config.json").exists():
        make_demo_model(folder)
    return str(folder)


def embed(model: str, images: Path, out: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.embed", "run", "--model", model, "--input", str(images),
                    "--output", str(out), "--no-progress", *extra], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def vectors_of(folder: Path) -> tuple[list[str], np.ndarray]:
    from storage.folder import Manifest, load_rows

    rows = load_rows(folder, Manifest.load(folder), "avgpool")
    return [rows.ids[int(r)] for r in rows.embedded], rows.vectors


# ---------------------------------------------------------------- duplicates and outliers
def planted_content_free(folder: Path) -> list[str]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    Image.new("RGB", (300, 200), (128, 128, 128)).save(folder / "zz_flat.png")
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / "zz_noise.png")
    text = Image.new("RGB", (320, 240), "white")
    draw = ImageDraw.Draw(text)
    for line in range(10):
        draw.text((10, 10 + 22 * line), "Lorem ipsum dolor sit amet, consectetur", fill="black")
    text.save(folder / "zz_text.png")
    return ["zz_flat.png", "zz_noise.png", "zz_text.png"]


def bench_dedup(model: str, tmp: Path) -> dict:
    from curation.dedup import dedup
    from curation.outliers import outliers
    from service.embed.model import FolderModel
    from storage.folder import Manifest

    images = tmp / "dups"
    photos = photos_for_quality(skimage_data_dir())
    sources = make_near_duplicate_fixture(photos, images)
    rng = np.random.default_rng(1)
    for i, photo in enumerate(photos):  # distinct crops: the nearest distinct images
        w, h = photo.size
        for j in range(6):
            cw, ch = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            photo.crop((x, y, x + cw, y + ch)).save(images / f"crop_{i:02d}_{j}.jpg", quality=90)
    planted = planted_content_free(images)
    out = tmp / "dups-emb"
    embed(model, images, out)
    fixed = dedup(out, threshold=0.86)
    fp, fr = pair_scores(out / "curation" / "duplicates.parquet", sources)
    fixed_largest = _largest_group(out)
    calibrated = dedup(out, model=FolderModel(Manifest.load(out)))  # calibrated with the folder's own model
    cp, cr = pair_scores(out / "curation" / "duplicates.parquet", sources)
    entry = json.loads((out / "curation" / "calibration.json").read_text())["avgpool"]
    result = {"images": fixed["embedded"], "fixed_0.86": {"precision": round(fp, 3), "recall": round(fr, 3),
                                                           "largest_group": fixed_largest},
              "calibrated": {"threshold": calibrated["threshold"], "precision": round(cp, 3), "recall": round(cr, 3),
                             "largest_group": _largest_group(out), "estimated": {k: entry[k] for k in
                                                                                 ("precision", "recall", "separable")},
                             "calibration_seconds": entry["seconds"]}}
    outliers(out)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "curation" / "outliers.parquet").to_pydict()
    ranked = [i for i, k in zip(table["id"], table["kind"]) if k != "broken"]
    embedded_only = sorted((i for i, k in zip(table["id"], table["kind"]) if k != "broken"),
                           key=lambda i: -table["score"][table["id"].index(i)])
    result["outliers"] = {"n": len(ranked), "rank_with_quality_flags": {p: ranked.index(p) + 1 for p in planted},
                          "rank_by_embedding_alone": {p: embedded_only.index(p) + 1 for p in planted}}
    return result


def _largest_group(out: Path) -> int:
    import pyarrow.parquet as pq

    groups = pq.read_table(out / "curation" / "duplicates.parquet", columns=["group"]).column("group").to_pylist()
    return max((groups.count(g) for g in set(groups)), default=0)


# ---------------------------------------------------------------- labels
def digits_set(folder: Path) -> dict[str, str]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = {}
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        pixels = (255 - image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR).convert("RGB").save(
            folder / f"{i:04d}.png")
        labels[f"{i:04d}.png"] = str(target)
    return labels


def photo_crops_set(folder: Path, per: int = 40) -> dict[str, str]:
    rng = np.random.default_rng(2)
    labels = {}
    for i, photo in enumerate(photos_for_quality(skimage_data_dir())):
        w, h = photo.size
        for j in range(per):
            cw, ch = int(w * rng.uniform(0.3, 0.6)), int(h * rng.uniform(0.3, 0.6))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            crop = photo.crop((x, y, x + cw, y + ch))
            crop.thumbnail((160, 160))
            crop.save(folder / f"p{i}_{j:02d}.jpg", quality=90)
            labels[f"p{i}_{j:02d}.jpg"] = f"photo{i}"
    return labels


def flip(labels: dict[str, str], seed: int) -> tuple[dict[str, str], set[str]]:
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels.values()))
    ids = sorted(labels)
    flipped = set(rng.choice(ids, int(FLIP * len(ids)), replace=False).tolist())
    noisy = {}
    for i in ids:
        if i in flipped:
            others = [c for c in classes if c != labels[i]]
            noisy[i] = others[int(rng.integers(len(others)))]
        else:
            noisy[i] = labels[i]
    return noisy, flipped


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))


def bench_labels(model: str, tmp: Path) -> dict:
    import cleanlab
    from cleanlab import Datalab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from curation.labels import labels as score_labels

    out: dict = {"cleanlab": cleanlab.__version__}
    for name, make in (("digits (1797, 10 classes)", digits_set), ("photo crops (320, 8 classes)", photo_crops_set)):
        images = tmp / f"labelled-{make.__name__}"
        images.mkdir()
        truth = make(images)
        emb = tmp / f"emb-{make.__name__}"
        embed(model, images, emb)
        ids, vectors = vectors_of(emb)
        results = []
        for seed in range(3):
            noisy, flipped = flip(truth, seed)
            csv = tmp / f"noisy-{make.__name__}-{seed}.csv"
            csv.write_text("id,label\n" + "".join(f"{i},{noisy[i]}\n" for i in ids))
            start = time.perf_counter()
            score_labels(emb, spec=str(csv))
            ours_s = time.perf_counter() - start
            import pyarrow.parquet as pq

            table = pq.read_table(emb / "curation" / "labels.parquet").to_pydict()
            ours = dict(zip(table["id"], table["score"]))
            positive = np.array([i in flipped for i in ids])
            classes = sorted(set(truth.values()))
            y = np.array([classes.index(noisy[i]) for i in ids])
            start = time.perf_counter()
            probs = cross_val_predict(LogisticRegression(max_iter=2000), vectors, y, cv=5, method="predict_proba")
            quality = get_label_quality_scores(y, probs)
            issues = find_label_issues(y, probs)
            cl_s = time.perf_counter() - start
            start = time.perf_counter()
            lab = Datalab({"label": y}, label_name="label", verbosity=0)
            lab.find_issues(features=vectors, issue_types={"label": {}})
            datalab = lab.get_issues("label")["label_score"].to_numpy()
            dl_s = time.perf_counter() - start
            results.append({
                "ours": auroc(np.array([ours[i] for i in ids]), positive),
                "cleanlab_find_label_issues": auroc(1 - quality, positive),
                "cleanlab_flagged_f1": _f1(issues, positive),
                "datalab_features": auroc(1 - datalab, positive),
                "seconds": {"ours": round(ours_s, 2), "cleanlab (CV LR + rank)": round(cl_s, 2),
                            "datalab": round(dl_s, 2)}})
        summary = {k: round(float(np.mean([r[k] for r in results])), 4) for k in
                   ("ours", "cleanlab_find_label_issues", "datalab_features", "cleanlab_flagged_f1")}
        summary["seconds (last seed)"] = results[-1]["seconds"]
        summary["per_seed"] = [{k: round(v, 4) for k, v in r.items() if k != "seconds"} for r in results]
        out[name] = summary
        if "digits" in name:
            out["_digits"] = (emb, ids, vectors, truth)
    return out


def _f1(flags: np.ndarray, positive: np.ndarray) -> float:
    tp = float((flags & positive).sum())
    return round(2 * tp / max(1.0, flags.sum() + positive.sum()), 4)


# ---------------------------------------------------------------- select and map on the digits
def bench_select(digits) -> dict:
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    from curation.map import build_map
    from curation.select import select

    emb, ids, vectors, truth = digits
    y = np.array([int(truth[i]) for i in ids])
    n = len(ids)
    count = n // 10
    select(emb, count=count, strategy="diverse")
    chosen = pq.read_table(emb / "curation" / "selection.parquet").column("id").to_pylist()
    summary_div = json.loads((emb / "curation" / "selection.json").read_text())
    position = {i: k for k, i in enumerate(ids)}
    diverse_rows = np.array([position[i] for i in chosen])
    out = {"n": n, "count": count, "diverse": [], "random": [], "coverage_radius": {}}

    def probe(train_rows: np.ndarray, seed: int) -> float:
        test = np.setdiff1d(np.arange(n), train_rows)
        # C=100: the vectors are unit-length, and 179 of them underfit at the default C=1
        clf = LogisticRegression(C=100.0, max_iter=5000, random_state=seed).fit(vectors[train_rows], y[train_rows])
        return float((clf.predict(vectors[test]) == y[test]).mean())

    def radius(rows_: np.ndarray) -> float:
        d = np.sqrt(np.maximum(2 - 2 * vectors @ vectors[rows_].T, 0)).min(axis=1)
        return float(d.max())

    for seed in range(3):
        rng = np.random.default_rng(seed)
        random_rows = rng.choice(n, count, replace=False)
        out["diverse"].append(round(probe(diverse_rows, seed), 4))
        out["random"].append(round(probe(random_rows, seed), 4))
        out["coverage_radius"].setdefault("random", []).append(round(radius(random_rows), 4))
    out["coverage_radius"]["diverse"] = round(radius(diverse_rows), 4)
    out["coverage_radius"]["diverse (reported, PCA-64)"] = summary_div["coverage_radius"]
    out["mean"] = {"diverse": round(float(np.mean(out["diverse"])), 4), "random": round(float(np.mean(out["random"])), 4)}
    csv = emb.parent / "digits-true.csv"
    csv.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))
    mapped = build_map(emb, clusters=10, labels_spec=str(csv))
    out["map"] = {"nmi_10_clusters_vs_digits": mapped["nmi"]["value"], "seconds": mapped["seconds"]}
    return out


# ---------------------------------------------------------------- quality vs CleanVision
def bench_quality(model: str, tmp: Path) -> dict:
    from PIL import Image, ImageEnhance, ImageFilter

    from curation.quality import quality

    images = tmp / "quality"
    images.mkdir()
    clean = photo_crops_set(images, per=25)
    planted: dict[str, str] = {}
    rng = np.random.default_rng(3)
    sources = sorted(clean)
    for k, name in enumerate(rng.choice(sources, 40, replace=False)):
        img = Image.open(images / name).convert("RGB")
        w, h = img.size
        kind = ("dark", "overexposed", "blurry", "low information", "odd aspect")[k % 5]
        if kind == "dark":
            img = ImageEnhance.Brightness(img).enhance(0.15)
        elif kind == "overexposed":
            img = ImageEnhance.Brightness(img).enhance(4.0)
        elif kind == "blurry":
            img = img.filter(ImageFilter.GaussianBlur(max(w, h) / 100))
        elif kind == "low information":
            img = Image.new("RGB", (w, h), tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0)))
        else:
            img = img.resize((w * 3, max(8, h // 2)))
        target = f"zz_{kind.replace(' ', '_')}_{k:02d}.jpg"
        img.save(images / target, quality=92)
        planted[target] = kind
    emb = tmp / "quality-emb"
    embed(model, images, emb)
    start = time.perf_counter()
    quality(emb)
    ours_s = time.perf_counter() - start
    import pyarrow.parquet as pq

    table = pq.read_table(emb / "curation" / "quality.parquet").to_pydict()
    ours = dict(zip(table["id"], table["reasons"]))
    from cleanvision import Imagelab

    start = time.perf_counter()
    lab = Imagelab(data_path=str(images))
    lab.find_issues(issue_types={"dark": {}, "light": {}, "blurry": {}, "low_information": {}, "odd_aspect_ratio": {}})
    cv_s = time.perf_counter() - start
    frame = lab.issues
    cv_name = {"dark": "is_dark_issue", "overexposed": "is_light_issue", "blurry": "is_blurry_issue",
               "low information": "is_low_information_issue", "odd aspect": "is_odd_aspect_ratio_issue"}
    cv = {Path(p).name: row for p, row in frame.iterrows()}
    out = {"clean": len(clean), "planted": len(planted), "seconds": {"ours (from stored stats)": round(ours_s, 2),
                                                                      "cleanvision": round(cv_s, 2)}}
    for kind, column in cv_name.items():
        mine = [t for t, k in planted.items() if k == kind]
        out[kind] = {
            "recall_ours": round(np.mean([kind in ours[t] for t in mine]), 3),
            "recall_cleanvision": round(np.mean([bool(cv[t][column]) for t in mine]), 3),
            "fpr_ours": round(np.mean([kind in ours[c] for c in clean]), 3),
            "fpr_cleanvision": round(np.mean([bool(cv[c][column]) for c in clean]), 3)}
    return out


def bench_stats_overhead(model: str, tmp: Path) -> dict:
    """What the image statistics add to `byol-embed run`: the same run in this process with them and with them
    replaced by nothing (the benchmark patches the pipeline; the product has no switch), alternated, 3 times each,
    best of each; with the demo model, the cheapest there is (a ResNet-50 makes the share smaller)."""
    from PIL import Image

    from service.embed import pipeline
    from service.embed.job import EmbedSettings, run_job
    from service.runtime.settings import RuntimeSettings

    images = tmp / "overhead"
    images.mkdir()
    photos = photos_for_quality(skimage_data_dir())
    rng = np.random.default_rng(4)
    for k in range(400):
        photo = photos[k % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        crop = photo.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.Resampling.BILINEAR)
        crop.save(images / f"{k:04d}.jpg", quality=90)
    real = pipeline.image_stats
    times: dict[str, list[float]] = {"with statistics": [], "without": []}
    for rep in range(3):
        for name, stats in (("with statistics", real), ("without", lambda img: None)):
            pipeline.image_stats = stats
            try:
                out = tmp / f"overhead-{rep}-{name.replace(' ', '-')}"
                start = time.perf_counter()
                run_job(EmbedSettings(runtime=RuntimeSettings(model=model), input=str(images), output=str(out),
                                      progress=False))
                times[name].append(time.perf_counter() - start)
            finally:
                pipeline.image_stats = real
    best = {k: min(v) for k, v in times.items()}
    return {"images": 400, "size": "500x375 JPEG", "seconds (best of 3)": {k: round(v, 3) for k, v in best.items()},
            "added_fraction": round(best["with statistics"] / best["without"] - 1, 4)}


# ---------------------------------------------------------------- scale
def bench_scale(n: int, dim: int, only: set[str] | None = None) -> dict:
    from benchmarks.curate import planted_vectors, write_folder

    with tempfile.TemporaryDirectory() as tmp:
        vectors, _ = planted_vectors(n, dim)
        folder = Path(tmp) / "emb"
        write_folder(folder, vectors)
        # labels: the cluster each vector was drawn from is not kept by planted_vectors: k-means-free stand-in,
        # the nearest of 100 random directions (the label work is the same whatever the labels mean)
        rng = np.random.default_rng(0)
        anchors = rng.standard_normal((100, dim)).astype(np.float32)
        labels = np.concatenate([np.argmax(vectors[s:s + 65536] @ anchors.T, axis=1)
                                 for s in range(0, n, 65536)])
        ids = [f"img{i:08d}" for i in range(n)]
        (Path(tmp) / "labels.csv").write_text("id,label\n" + "".join(f"{i},c{c}\n" for i, c in zip(ids, labels)))
        del vectors
        times = {}
        for name, argv in (("dedup", ["dedup", str(folder), "--threshold", "0.9"]),
                           ("labels", ["labels", str(folder), "--labels", str(Path(tmp) / "labels.csv")]),
                           ("select diverse 10%", ["select", str(folder), "-n", str(n // 10)]),
                           ("map", ["map", str(folder)])):
            if only and name.split()[0] not in only:
                continue
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "service.embed", *argv, "--no-progress", "--json"], check=True,
                           capture_output=True, cwd=REPO)
            times[name] = round(time.perf_counter() - start, 1)
            print(f"  {name}: {times[name]} s", flush=True)
        out = {"n": n, "dim": dim, "seconds": times}
        if "labels" in times and "dedup" in times:
            out["labels_vs_dedup"] = round(times["labels"] / times["dedup"], 3)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every comparison below but --scale")
    parser.add_argument("--dedup", action="store_true", help="calibrated vs fixed threshold; outlier ranks")
    parser.add_argument("--labels", action="store_true", help="mislabel AUROC vs cleanlab; then select and map")
    parser.add_argument("--quality", action="store_true", help="quality flags vs CleanVision; statistics' cost")
    parser.add_argument("--scale", type=int, default=0, metavar="N", help="labels/select/map time at N x 512")
    parser.add_argument("--scale-only", default=None, metavar="NAMES",
                        help="--scale: only these, comma-separated (dedup, labels, select, map)")
    parser.add_argument("--model", default=None, help="model folder (default: the demo model)")
    args = parser.parse_args()
    from hub.hardware import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.all or args.dedup or args.labels or args.quality:
            model = args.model or demo_model()
            results["model"] = model
        if args.all or args.dedup:
            results["dedup"] = bench_dedup(model, tmp)
            print(json.dumps({"dedup": results["dedup"]}, indent=1), flush=True)
        if args.all or args.labels:
            labelled = bench_labels(model, tmp)
            digits = labelled.pop("_digits")
            results["labels"] = labelled
            print(json.dumps({"labels": labelled}, indent=1), flush=True)
            results["select"] = bench_select(digits)
            print(json.dumps({"select": results["select"]}, indent=1), flush=True)
        if args.all or args.quality:
            results["quality"] = bench_quality(model, tmp)
            results["stats_overhead"] = bench_stats_overhead(model, tmp)
            print(json.dumps({"quality": results["quality"], "stats_overhead": results["stats_overhead"]}, indent=1),
                  flush=True)
    if args.scale:
        results["scale"] = bench_scale(args.scale, 512, set(args.scale_only.split(",")) if args.scale_only else None)
        print(json.dumps({"scale": results["scale"]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
