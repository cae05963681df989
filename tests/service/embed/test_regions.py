"""Search inside images, end to end on a planted set (objects pasted into unrelated photos): ``byol-embed run
--regions``, the region index, ``byol-embed search --regions [--box]``, appends, and the errors a user meets."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from service.embed.cli import main
from service.embed.region_index import LoadedRegionIndex
from storage.folder import REGION_CODES, REGION_SEEN, Manifest
from tests.support.planted import COUNT, LAYER

GRID, WINDOWS = 16, 25  # feature3 at 128²: 5 x 5 windows of 5 cells


def search(capsys, folder, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["search", str(folder), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["results"]


def planted_in(results, holds, k: int, obj: int) -> int:
    return sum(holds[int(r["id"][:4])] == obj for r in results[:k])


def test_a_run_stores_region_codes_with_their_boxes_and_the_codec(regions_emb, region_model):
    manifest = Manifest.load(regions_emb)
    assert manifest.regions == {"layer": LAYER, "dims": 64}
    codec = manifest.region_codec
    assert (regions_emb / codec["file"]).is_file() and codec["grid"] == GRID and codec["windows"] == WINDOWS
    table = pq.read_table(regions_emb / manifest.parts[0]["name"])
    assert table.schema.field(REGION_CODES).type.list_size == WINDOWS * 64
    seen = np.array(table.column(REGION_SEEN).to_pylist())
    # 320x240 photos: the shorter side resized to resize_size, then a centred crop_size square; in the photo's
    # pixels that square is 240 x crop/resize wide, centred
    prep = json.loads((region_model / "config.json").read_text())["preprocessing"]
    side = 240 * prep["crop_size"] / prep["resize_size"]
    assert np.allclose(seen, [(320 - side) / 2, (240 - side) / 2, side], atol=0.01)
    meta = json.loads((regions_emb / "regions" / "index" / "index.json").read_text())
    assert meta["images"] == COUNT and meta["regions"] == COUNT * WINDOWS and meta["factory"] == "IDMap2,Flat"


def test_a_part_finds_the_images_that_hold_it_where_whole_image_search_does_not(regions_emb, planted, capsys):
    root, holds, boxes = planted
    found = whole = 0
    for obj in (0, 2):  # the drawn logo and the coins
        results = search(capsys, regions_emb, "--image", str(root / f"object{obj}.png"), "--regions", "-k", "8")
        assert all(len(r["box"]) == 4 and r["box"][0] < r["box"][2] and r["box"][1] < r["box"][3] for r in results)
        found += planted_in(results, holds, 8, obj)
        whole += planted_in(search(capsys, regions_emb, "--image", str(root / f"object{obj}.png"), "-k", "8"),
                            holds, 8, obj)
    print(f"planted images found in the top 8: regions {found}, whole image {whole} of 16")
    assert found >= 10 and found > whole, (found, whole)  # of 16 planted


def test_a_box_in_a_photo_finds_its_part_there_and_in_other_photos(regions_emb, planted, capsys):
    root, holds, boxes = planted
    j = int(np.flatnonzero(holds == 0)[2])
    x0, y0, x1, y1 = boxes[j]
    results = search(capsys, regions_emb, "--image", str(root / "images" / f"{j:04d}.jpg"), "--regions", "--box",
                     f"{x0},{y0},{x1},{y1}", "-k", "8")
    first = results[0]
    assert first["id"] == f"{j:04d}.jpg"  # the photo itself, at the part's place
    bx0, by0, bx1, by1 = first["box"]
    assert bx0 < x1 and x0 < bx1 and by0 < y1 and y0 < by1
    assert planted_in(results[1:], holds, 7, 0) >= 3
    # the same box in fractions of the image's width and height
    fractions = search(capsys, regions_emb, "--image", str(root / "images" / f"{j:04d}.jpg"), "--regions", "--box",
                       f"{x0 / 320},{y0 / 240},{x1 / 320},{y1 / 240}", "-k", "8")
    assert [r["id"] for r in fractions[:3]] == [r["id"] for r in results[:3]]


def test_appends_follow_into_the_region_index(region_model, planted, tmp_path, capsys):
    import shutil

    root, holds, _ = planted
    data = tmp_path / "data"
    shutil.copytree(root / "images", data)
    removed = [f"{i:04d}.jpg" for i in np.flatnonzero(holds == 0)[:4]]
    for name in removed:
        (data / name).unlink()
    out = tmp_path / "emb"
    args = ["run", "--model", str(region_model), "--input", str(data), "--output", str(out), "--regions", LAYER,
            "--no-progress"]
    assert main(args) == 0 and main(["index", str(out)]) == 0
    codec = Manifest.load(out).region_codec
    for name in removed:
        shutil.copy(root / "images" / name, data / name)
    (data / "0047.jpg").unlink()
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "region index updated in place to generation 2 (4 images added, 1 removed)" in printed
    assert Manifest.load(out).region_codec == codec  # the appended images are reduced as the first run's were
    loaded = LoadedRegionIndex.open(out)
    assert sorted(loaded.ids) == sorted(f"{i:04d}.jpg" for i in range(COUNT - 1))
    results = search(capsys, out, "--image", str(root / "object0.png"), "--regions", "-k", "8")
    assert {r["id"] for r in results} & set(removed)  # the images added again are found


def test_errors_say_what_was_wrong(regions_emb, emb, planted, capsys):
    root, _, _ = planted
    with pytest.raises(SystemExit):
        main(["run", "--model", "x", "--input", "x", "--output", "x", "--regions", "avgpool"])
    assert "invalid choice: 'avgpool'" in capsys.readouterr().err
    image = str(root / "object0.png")
    for argv, message in ((["search", str(regions_emb), "--image", image, "--box", "1,2,3,4"], "add --regions"),
                          (["search", str(regions_emb), "--image", image, "--regions", "--box", "5,5,1,1"],
                           "expected x0 < x1"),
                          (["search", str(regions_emb), "--image", image, "--regions", "--box", "1,2,3"],
                           "expected four numbers"),
                          (["search", str(regions_emb), "--id", "0001.jpg", "--regions"], "looks for a part of --image"),
                          (["search", str(emb), "--image", image, "--regions"], "has no regions")):
        assert main(argv) != 0, argv
        assert message in capsys.readouterr().err, argv


def test_shared_parts_pair_images_holding_the_same_object(regions_emb, planted, capsys):
    from curation.results import SHARED_PARTS, ResultReader

    _, holds, _ = planted
    reader = ResultReader(regions_emb, SHARED_PARTS)
    summary = reader.summary()
    calibration = summary["calibration"]
    assert calibration["composites"] == 48 and summary["threshold"] == calibration["threshold"]
    rows = reader.page(0, 10_000, ["id", "id_b", "similarity", "box", "box_b", "kind"])[0].to_pylist()
    assert rows and len(rows) == summary["pairs"]
    same = 0
    for r in rows:
        assert r["id"] < r["id_b"] and r["similarity"] >= summary["threshold"] - 1e-6 and r["kind"] == "shared part"
        for box in (r["box"], r["box_b"]):
            assert 0 <= box[0] < box[2] <= 320.5 and 0 <= box[1] < box[3] <= 240.5
        a, b = holds[int(r["id"][:4])], holds[int(r["id_b"][:4])]
        same += int(a >= 0 and a == b)
    # pairs holding the same object are far more common among the pairs found than among all pairs
    chance = 4 * 28 / (COUNT * (COUNT - 1) / 2)
    print(f"shared parts: {len(rows)} pairs, {same} of them the same planted object (chance {chance:.3f})")
    assert same >= 3 and same / len(rows) > 2 * chance
    # a threshold of one's own, and a refusal that says what is accepted
    capsys.readouterr()
    assert main(["shared", str(regions_emb), "--threshold", "0.9999", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] < len(rows)
    assert main(["shared", str(regions_emb), "--mutual", "0", "--threshold", "0.9"]) == 2
    assert "--mutual must be >= 1" in capsys.readouterr().err
    assert main(["shared", str(regions_emb), "--no-progress"]) == 0  # calibrated again: as the fixture left it


def test_a_large_sets_factory_is_trained_and_answers_like_the_exact_one(regions_emb, region_model, planted, tmp_path):
    """Past a million regions the index is OPQ + IVF + PQ (trained on a sample): built small here, it finds what
    the exact index finds."""
    import shutil

    from service.embed.model import FolderModel
    from service.embed.region_index import FLAT_LIMIT, build_region_index, factory_for

    assert factory_for(FLAT_LIMIT) == "IDMap2,Flat" and factory_for(36_000_000) == "OPQ32,IVF16384,PQ32"
    root, _, _ = planted
    copy = tmp_path / "emb"
    shutil.copytree(regions_emb, copy)
    exact = LoadedRegionIndex.open(regions_emb)
    meta = build_region_index(copy, factory="OPQ8,IVF8,PQ16x4")  # 4-bit codes: trained in a second
    assert meta["trained_on"] >= 8 * 39 and meta["regions"] == COUNT * WINDOWS
    trained = LoadedRegionIndex.open(copy, nprobe=8)
    from PIL import Image

    parts = FolderModel(exact.manifest, maps=(LAYER,)).region_parts(Image.open(root / "object0.png"), None)
    want = {r["id"] for r in exact.search(parts, 10)}
    got = {r["id"] for r in trained.search(parts, 10)}
    assert len(want & got) >= 6, (want, got)
