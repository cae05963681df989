"""`byol-embed quality`, `labels`, `select` and `map` on a real embedding folder: crops of real photos labelled by
their photo (folder names), planted bad images, a CSV with flipped labels; on disk and on S3 (moto's server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from service.embed.cli import main
from tests.support.images import photos_for_quality, skimage_data_dir

FLIPPED = 6


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, trained_model):
    root = tmp_path_factory.mktemp("labelled")
    images = root / "images"
    rng = np.random.default_rng(0)
    photos = photos_for_quality(skimage_data_dir())
    ids = []
    for i, photo in enumerate(photos):
        w, h = photo.size
        (images / f"photo{i}").mkdir(parents=True)
        for j in range(8):
            cw, ch = int(w * rng.uniform(0.5, 0.8)), int(h * rng.uniform(0.5, 0.8))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            crop = photo.crop((x, y, x + cw, y + ch))
            crop.thumbnail((200, 200))
            crop.save(images / f"photo{i}" / f"{j}.jpg", quality=90)
            ids.append(f"photo{i}/{j}.jpg")
    bad = images / "zz_planted"
    bad.mkdir()
    base = photos[0].copy()
    base.thumbnail((200, 200))
    planted = {"dark.jpg": ImageEnhance.Brightness(base).enhance(0.15),
               "overexposed.jpg": ImageEnhance.Brightness(base).enhance(4.0),
               "blurry.jpg": base.filter(ImageFilter.GaussianBlur(4)),
               "flat.png": Image.new("RGB", (200, 150), (90, 140, 60)),
               "banner.jpg": base.resize((400, 60))}
    for name, img in planted.items():
        img.save(bad / name)
    out = root / "emb"
    assert main(["run", "--model", str(trained_model), "--input", str(images), "--output", str(out), "--no-progress",
                 "--labels", "folders", "--shard-size", "20"]) == 0
    # a CSV of the same labels with some flipped to another photo's
    flipped = sorted(rng.choice(len(ids), FLIPPED, replace=False).tolist())
    rows = ["id,label"]
    for k, item in enumerate(ids):
        label = item.split("/")[0]
        if k in flipped:
            label = f"photo{(int(label[5:]) + 3) % len(photos)}"
        rows.append(f"{item},{label}")
    (root / "noisy.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "emb": out, "images": images, "ids": ids, "flipped": {ids[k] for k in flipped},
            "csv": root / "noisy.csv"}


def _table(folder: Path, name: str) -> dict:
    return pq.read_table(folder / "curation" / name).to_pydict()


def test_quality_flags_the_planted_images_with_their_reason(labelled, capsys):
    folder = labelled["emb"]
    assert main(["quality", str(folder), "--no-progress"]) == 0
    assert "images flagged" in capsys.readouterr().out
    table = _table(folder, "quality.parquet")
    reasons = dict(zip(table["id"], table["reasons"]))
    expect = {"dark.jpg": "dark", "overexposed.jpg": "overexposed", "blurry.jpg": "blurry",
              "flat.png": "low information", "banner.jpg": "odd aspect"}
    for name, reason in expect.items():
        assert reason in reasons[f"zz_planted/{name}"], (name, reasons[f"zz_planted/{name}"])
    # the photos are not flagged, but for the Hubble deep field's crops (photo5: a night sky, dark indeed)
    photos_flagged = [i for i in labelled["ids"] if reasons[i] and not i.startswith("photo5/")]
    assert len(photos_flagged) <= len(labelled["ids"]) // 20, photos_flagged
    assert all(reasons[i] in ([], ["dark"]) for i in labelled["ids"] if i.startswith("photo5/"))
    # the statistics were measured during `run` (nothing read again); a threshold can be set
    summary = json.loads((folder / "curation" / "quality.json").read_text())
    assert summary["recomputed"] == 0 and summary["measured"] == len(table["id"])
    assert main(["quality", str(folder), "--no-progress", "--dark", "0.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reasons"]["dark"] == 0


def test_an_older_folder_is_measured_by_reading_its_images_again(labelled, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(labelled["emb"], old)
    for shard in old.glob("part-*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop([c for c in table.column_names if c.startswith("quality_")]), shard)
    assert main(["quality", str(old), "--no-progress"]) == 0
    summary = json.loads((old / "curation" / "quality.json").read_text())
    assert summary["recomputed"] == summary["measured"] == len(labelled["ids"]) + 5
    again, fresh = _table(old, "quality.parquet"), _table(labelled["emb"], "quality.parquet")
    for stat in ("width", "height", "brightness", "contrast", "blur", "entropy", "sharpness"):
        assert np.allclose(again[stat], fresh[stat], rtol=1e-5), stat


def test_labels_rank_the_flipped_labels_first_and_suggest_the_true_one(labelled, capsys):
    folder = labelled["emb"]
    assert main(["labels", str(folder), "--labels", str(labelled["csv"]), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "most likely mislabelled" in printed and "classes most confused" in printed
    table = _table(folder, "labels.parquet")
    assert set(table) >= {"id", "label", "suggested", "score", "rank", "class_outlier", "class_outlier_percentile"}
    rank = dict(zip(table["id"], table["rank"]))
    flipped = labelled["flipped"]
    # AUROC of the score: a flipped label against a correct one
    score = dict(zip(table["id"], table["score"]))
    pairs = [(score[f] > score[c]) + 0.5 * (score[f] == score[c]) for f in flipped for c in labelled["ids"]
             if c not in flipped]
    auroc = float(np.mean(pairs))
    assert auroc >= 0.8, (auroc, sorted(rank[f] for f in flipped))
    suggested = dict(zip(table["id"], table["suggested"]))
    assert sum(suggested[f] == f.split("/")[0] for f in flipped) >= FLIPPED // 2
    summary = json.loads((folder / "curation" / "labels.json").read_text())
    # the CSV labels the 8 photos' crops only: the planted images are unlabelled, neither scored nor voting
    assert summary["classes"] == 8 and summary["labelled"] == len(labelled["ids"]) and summary["confused_pairs"]


def test_labels_from_the_run_and_bad_sources_are_clear(labelled, tmp_path, capsys):
    folder = labelled["emb"]
    assert main(["labels", str(folder), "--json", "--no-progress"]) == 0  # `run --labels folders`, recorded
    assert json.loads(capsys.readouterr().out)["labels"] == "folders"
    # a CSV given to `run --labels` is kept in the folder: it scores without the file it came from
    from curation.label_sources import save_spec
    from storage.store import as_store

    copy, given = tmp_path / "copy", tmp_path / "given.csv"
    shutil.copytree(folder, copy)
    shutil.copyfile(labelled["csv"], given)
    save_spec(as_store(copy), str(given))
    given.unlink()
    assert main(["labels", str(copy), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == str(given)
    for spec, message in (("nonsense", "not a label source"), (str(tmp_path / "none.csv"), "no such file"),
                          ("column:label", "needs a Parquet input")):
        assert main(["labels", str(folder), "--labels", spec, "--no-progress"]) == 2
        assert message in capsys.readouterr().err


def test_select_is_deterministic_covers_the_set_and_balances_labels(labelled, capsys):
    folder = labelled["emb"]
    assert main(["select", str(folder), "-n", "8", "--no-progress", "--json"]) == 0
    diverse = json.loads(capsys.readouterr().out)
    first = _table(folder, "selection.parquet")
    assert diverse["selected"] == 8 and first["order"] == list(range(1, 9))
    assert main(["select", str(folder), "-n", "8", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    assert _table(folder, "selection.parquet") == first
    # k-center greedy: each pick's distance to the earlier ones never grows
    gaps = first["distance"][1:]
    assert all(a >= b - 1e-5 for a, b in zip(gaps, gaps[1:]))
    # a minimum distance stops early, with the reason
    assert main(["select", str(folder), "-n", "60", "--min-distance", str(diverse["coverage_radius"] * 1.01),
                 "--no-progress", "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert stopped["selected"] <= 8 and "stopped" in stopped
    assert main(["select", str(folder), "-n", "9", "--strategy", "balanced", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    groups = _table(folder, "selection.parquet")["group"]
    assert sorted(groups) == sorted({i.split("/")[0] for i in labelled["ids"]} | {"zz_planted"})
    assert main(["select", str(folder), "-n", "5", "--strategy", "typical", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    typical = _table(folder, "selection.parquet")
    assert len(typical["id"]) == 5 and typical["density"] == sorted(typical["density"], reverse=True)
    assert main(["select", str(folder), "-n", "0"]) == 2 and "-n must be >= 1" in capsys.readouterr().err


def test_map_writes_coordinates_and_clusters_scored_against_the_labels(labelled, capsys):
    folder = labelled["emb"]
    assert main(["map", str(folder), "--clusters", "8", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = _table(folder, "map.parquet")
    assert set(table) == {"id", "path", "x", "y", "cluster"} and len(table["id"]) == len(labelled["ids"]) + 5
    assert max(map(abs, table["x"] + table["y"])) <= 1.0 + 1e-6 and len(set(table["cluster"])) == 8
    assert summary["nmi"]["labels"] == "folders" and 0.0 <= summary["nmi"]["value"] <= 1.0
    assert main(["map", str(folder), "--clusters", "1"]) == 2 and "--clusters must be >= 2" in capsys.readouterr().err


def test_the_tools_run_on_a_folder_on_s3_as_on_disk(labelled, s3, capsys, tmp_path):
    local = tmp_path / "local"
    shutil.copytree(labelled["emb"], local)
    shutil.rmtree(local / "curation", ignore_errors=True)
    s3.upload_tree(local, "bkt/tools/emb")
    url = "s3://bkt/tools/emb/"
    for argv in (["quality"], ["labels"], ["select", "-n", "6"], ["map", "--clusters", "4"]):
        assert main([argv[0], str(local), *argv[1:], "--no-progress", "--json"]) == 0, argv
        assert main([argv[0], url, *argv[1:], *s3.option, "--no-progress", "--json"]) == 0, argv
        capsys.readouterr()
    for name in ("quality.parquet", "labels.parquet", "selection.parquet", "map.parquet"):
        remote = pq.read_table(f"bkt/tools/emb/curation/{name}", filesystem=s3.fs).to_pydict()
        mine = _table(local, name)
        assert remote["id"] == mine["id"], name
