"""``byol-embed leaks``: the images of a test split that are copies of training images, exact or near, between two
real embedding folders (on disk and on S3); folders embedded differently are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("faiss")

from service.embed.cli import main  # noqa: E402
from tests.support.images import make_near_duplicate_fixture, photos_for_quality, skimage_data_dir  # noqa: E402


def embed(model: Path, data: str, out: str, *extra: str) -> None:
    assert main(["run", "--model", str(model), "--input", data, "--output", out, "--no-progress", *extra]) == 0


@pytest.fixture(scope="module")
def splits(tmp_path_factory, trained_model) -> dict:
    """train: six originals; test: three originals' transformed copies (planted leaks), one byte-identical copy,
    two photos that are in neither."""
    root = tmp_path_factory.mktemp("leaks")
    photos = photos_for_quality(skimage_data_dir())
    pool = root / "pool"
    sources = make_near_duplicate_fixture(photos, pool)
    train, test = root / "train", root / "test"
    train.mkdir()
    test.mkdir()
    for i in range(6):
        shutil.copy(pool / f"orig_{i:02d}.jpg", train / f"orig_{i:02d}.jpg")
    planted = {c: o for c, o in sources.items() if int(c[5:7]) < 3}
    for copy in planted:
        shutil.copy(pool / copy, test / copy)
    shutil.copy(pool / "orig_04.jpg", test / "same_bytes_as_04.jpg")
    for i in (6, 7):
        shutil.copy(pool / f"orig_{i:02d}.jpg", test / f"unseen_{i:02d}.jpg")
    embed(trained_model, str(train), str(root / "emb_train"))
    embed(trained_model, str(test), str(root / "emb_test"))
    return {"root": root, "train": root / "emb_train", "test": root / "emb_test", "planted": planted,
            "test_images": test, "train_images": train}


def test_planted_copies_are_found_and_the_clean_list_holds_the_rest(splits, capsys):
    # by default the threshold is the test split's calibration (measured now, for the shared model)
    assert main(["leaks", str(splits["train"]), str(splits["test"]), "--no-progress", "--json"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    entry = json.loads((splits["test"] / "curation" / "calibration.json").read_text())["avgpool"]
    assert calibrated["threshold"] == entry["threshold"] and calibrated["threshold_from"]["source"] == "calibrated now"
    # this weak test model's calibration errs on precision; at a given threshold the copies are all found
    assert main(["leaks", str(splits["train"]), str(splits["test"]), "--no-progress", "--threshold", "0.86"]) == 0
    printed = capsys.readouterr().out
    assert "images of" in printed and "leaks.parquet" in printed
    table = pq.read_table(splits["test"] / "curation" / "leaks.parquet").to_pydict()
    assert set(table) == {"id", "path", "id_a", "path_a", "similarity", "kind", "locator_a"}
    assert all(loc.startswith("o|") and loc.endswith(a) for loc, a in zip(table["locator_a"], table["id_a"]))
    found = dict(zip(table["id"], table["id_a"]))
    kinds = dict(zip(table["id"], table["kind"]))
    assert found["same_bytes_as_04.jpg"] == "orig_04.jpg" and kinds["same_bytes_as_04.jpg"] == "exact"
    truth = {**splits["planted"], "same_bytes_as_04.jpg": "orig_04.jpg"}
    correct = sum(found.get(c) == o for c, o in truth.items())
    assert correct / len(truth) >= 0.9 and correct / len(found) >= 0.95, (correct, len(truth), len(found))
    assert all(s >= 0.86 - 1e-6 for s, k in zip(table["similarity"], table["kind"]) if k == "near")
    clean = (splits["test"] / "curation" / "leaks_clean.txt").read_text().split()
    assert {"unseen_06.jpg", "unseen_07.jpg"} <= set(clean) and not set(clean) & set(found)
    assert len(clean) + len(found) == len(truth) + 2
    summary = json.loads((splits["test"] / "curation" / "leaks.json").read_text())
    assert summary["leaks"] == len(found) and summary["generation"] == 1 and summary["exact"] == 1


def test_folders_embedded_differently_are_refused(splits, trained_model, capsys):
    other = splits["root"] / "emb_test_normalized"
    embed(trained_model, str(splits["train_images"]), str(other), "--normalize")
    assert main(["leaks", str(splits["train"]), str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "embedded differently" in err and "normalize: False -> True" in err
    assert main(["leaks", str(splits["train"]), str(splits["test"]), "--layer", "feature3"]) == 2
    assert "has no layer 'feature3'" in capsys.readouterr().err
    assert main(["leaks", str(splits["test"]), str(splits["test"])]) == 2
    assert "the same" in capsys.readouterr().err


def test_leaks_between_a_folder_on_disk_and_one_on_s3(splits, s3, capsys):
    assert main(["leaks", str(splits["train"]), str(splits["test"]), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    s3.upload_tree(splits["test"], "bkt/leaks/emb_test")
    s3.fs.rm("bkt/leaks/emb_test/curation/calibration.json")  # measured again there: the same sample, same result
    assert main(["leaks", str(splits["train"]), "s3://bkt/leaks/emb_test/", *s3.option, "--json"]) == 0
    on_s3 = json.loads(capsys.readouterr().out)
    assert s3.fs.exists("bkt/leaks/emb_test/curation/leaks.parquet")
    assert s3.fs.exists("bkt/leaks/emb_test/curation/calibration.json")
    assert on_s3["threshold_from"]["source"] == "calibrated now" and on_s3["threshold"] == local["threshold"]
    assert (on_s3["leaks"], on_s3["exact"], on_s3["clean"]) == (local["leaks"], local["exact"], local["clean"]) \
        and on_s3["exact"] == 1 and on_s3["leaks"] >= 10
