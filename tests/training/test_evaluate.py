"""Every protocol end to end on small real data: scikit-learn's digits as ImageFolder and VOCdevkit trees."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hub import BYOLModel, ModelConfig
from tests.support.models import randomize_bn
from training.evaluate import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model = BYOLModel(ModelConfig(architecture="resnet18", name="eval-test",
                                  preprocessing={"resize_size": 73, "crop_size": 64}))
    randomize_bn(model)
    folder = tmp_path_factory.mktemp("eval") / "model"
    model.save_pretrained(folder)
    return folder


def _digit(img: np.ndarray) -> Image.Image:
    return Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((64, 64), Image.Resampling.NEAREST).convert("RGB")


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    counts: dict[tuple[str, int], int] = {}
    for img, label in zip(digits.images, digits.target):
        if label > 3:
            continue
        for split, quota in (("train", 15), ("val", 8)):
            if counts.get((split, label), 0) < quota:
                counts[(split, label)] = counts.get((split, label), 0) + 1
                (root / split / str(label)).mkdir(parents=True, exist_ok=True)
                _digit(img).save(root / split / str(label) / f"{len(counts)}_{counts[(split, label)]}.png")
                break
    return root


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
    """VOC2007 layout: digits 0/1/2 as 'cat'/'dog'/'bird', one positive class per image, some difficult."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("voc") / "VOC2007"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    classes = {0: "cat", 1: "dog", 2: "bird"}
    rows = {split: [] for split in ("trainval", "test")}
    n = 0
    for img, label in zip(digits.images, digits.target):
        if label not in classes:
            continue
        split = "trainval" if n % 3 else "test"
        image_id = f"{n:06d}"
        _digit(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        rows[split].append((image_id, label))
        n += 1
        if n >= 150:
            break
    for split, items in rows.items():
        for label, cls in classes.items():
            lines = [f"{i} {1 if lab == label else (0 if j % 17 == 0 else -1)}" for j, (i, lab) in enumerate(items)]
            (root / "ImageSets" / "Main" / f"{cls}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BYOL_CACHE", str(tmp_path / "cache"))


def _results(model_dir, name):
    return json.loads((model_dir / "results" / name).read_text())


def test_knn_writes_results_and_updates_the_card(model_dir, digits_tree, capsys):
    code = main(["knn", "--model", str(model_dir), "--train", str(digits_tree / "train"), "--val",
                 str(digits_tree / "val"), "--dataset-name", "digits", "--update-card", "--no-progress"])
    assert code == 0
    record = _results(model_dir, "knn-digits-features.json")
    assert record["splits"] == {"train": 60, "val": 32} and record["weights_sha256"]
    accs = {e["k"]: e["value"] for e in record["results"]}
    assert set(accs) == {20, 200} and all(25 <= v <= 100 for v in accs.values())  # 4 classes: chance is 25
    card = (model_dir / "README.md").read_text()
    assert "#### digits: weighted kNN (top-1)" in card and "measured (features)" in card


def test_linear_fast_and_faithful(model_dir, digits_tree, capsys):
    common = ["--model", str(model_dir), "--train", str(digits_tree / "train"), "--val", str(digits_tree / "val"),
              "--dataset-name", "digits", "--no-progress", "--lr", "0.5", "--head-batch-size", "16"]
    assert main(["linear", *common, "--mode", "fast", "--epochs", "20", "--seeds", "2"]) == 0
    fast = _results(model_dir, "linear-digits-fast.json")["results"][0]
    assert fast["layer"] == "avgpool" and fast["std"] is not None and fast["value"] > 30
    assert fast["recipe"]["optimizer"] == "sgd" and fast["recipe"]["milestones"] == [0.6, 0.8]
    assert main(["linear", *common, "--mode", "faithful", "--epochs", "2"]) == 0
    faithful = _results(model_dir, "linear-digits-faithful.json")["results"][0]
    assert faithful["mode"] == "faithful" and 0 <= faithful["value"] <= 100
    assert "seeds" in capsys.readouterr().out


def test_mhead_reports_every_feature(model_dir, digits_tree):
    assert main(["mhead", "--model", str(model_dir), "--train", str(digits_tree / "train"), "--val",
                 str(digits_tree / "val"), "--dataset-name", "digits", "--epochs", "3", "--no-progress"]) == 0
    entries = _results(model_dir, "mhead-digits-fast.json")["results"]
    assert [e["layer"] for e in entries] == ["feature1", "feature2", "feature3", "feature4", "feature5"]
    assert entries[0]["recipe"]["nesterov"] is True and entries[0]["recipe"]["weight_decay"] == 1e-4


def test_voc07_svm_and_low_shot(model_dir, voc_tree, capsys):
    assert main(["voc07-svm", "--model", str(model_dir), "--voc", str(voc_tree), "--layers", "feature4,feature5",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best layer:" in out
    full = _results(model_dir, "voc07-svm-VOC2007-features.json")["results"]
    assert {e["layer"] for e in full} == {"feature4", "feature5"} and all(0 < e["value"] <= 100 for e in full)
    assert main(["voc07-svm", "--model", str(model_dir), "--voc", str(voc_tree), "--layers", "feature5",
                 "--low-shot", "--k", "1", "2", "96", "--draws", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "low-shot SVM k=96: skipped" in out
    low = _results(model_dir, "voc07-lowshot-svm-VOC2007-features.json")["results"]
    assert sorted(e["k"] for e in low) == [1, 2] and all(e["min"] <= e["value"] <= e["max"] for e in low)


def test_fast_mode_is_refused_where_the_cache_would_not_fit(model_dir, digits_tree, capsys):
    code = main(["mhead", "--model", str(model_dir), "--train", str(digits_tree / "train"), "--val",
                 str(digits_tree / "val"), "--max-cache-gb", "0.0001", "--no-progress"])
    assert code == 2 and "use --mode faithful" in capsys.readouterr().err


def test_onnx_extraction_matches_torch(tmp_path, model_dir, digits_tree):
    from training.evaluation.features import features_of, onnx_session

    folder = tmp_path / "with-onnx"
    BYOLModel.from_pretrained(model_dir).save_pretrained(folder, onnx=True)
    model = BYOLModel.from_pretrained(folder)
    session = onnx_session(model)
    assert session is not None and onnx_session(BYOLModel.from_pretrained(model_dir)) is None
    paths = sorted((digits_tree / "val").rglob("*.png"))[:8]
    for pooling, layers in (("gap", ("feature2", "avgpool")), ("mhead", ("feature4", "feature5"))):
        a = features_of(model, paths, layers, pooling, session=session)
        b = features_of(model, paths, layers, pooling)
        for layer in layers:
            assert np.abs(a[layer] - b[layer]).max() <= 1e-4 * np.abs(b[layer]).max(), (pooling, layer)


def test_features_are_cached_and_reused(model_dir, digits_tree, monkeypatch):
    from training.evaluation import features
    from training.evaluation.data import image_folder

    model = BYOLModel.from_pretrained(model_dir)
    data = image_folder(digits_tree / "val")
    first = features.extract(model, data, ("avgpool",), "gap", progress=False)["avgpool"]

    def boom(*a, **k):
        raise AssertionError("recomputed a cached feature")

    monkeypatch.setattr(features, "preprocess_one", boom)
    again = features.extract(model, data, ("avgpool",), "gap", progress=False)["avgpool"]
    assert np.array_equal(first, again) and first.shape == (32, 512)
