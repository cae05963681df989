import io
import tarfile

import pytest
import torch

from tests.support.images import image_bytes
from training.augment import AugmentConfig
from training.data import DataError, ResumableSampler, TwoViewDataset, collate_views, open_source


def test_sources_folder_list_and_tar_shards_agree(tmp_path, photos):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    names = []
    for i, img in enumerate(photos[:4]):
        path = tmp_path / "imgs" / "a" / f"{i}.jpg"
        path.write_bytes(image_bytes(img.resize((64, 48))))
        names.append(f"imgs/a/{i}.jpg")
    (tmp_path / "list.txt").write_text("\n".join(f"{n} 3" for n in names) + "\n")
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for n in names:
            tar.add(tmp_path / n, arcname=f"{n.replace('/', '_')}")
            info = tarfile.TarInfo(f"{n.replace('/', '_')}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"3"))
    folder, listed, shards = (open_source(str(tmp_path / "imgs")), open_source(str(tmp_path / "list.txt")),
                              open_source(str(tmp_path / "shard-*.tar")))
    assert len(folder) == len(listed) == len(shards) == 4
    assert [folder.read(i) for i in range(4)] == [listed.read(i) for i in range(4)] == [shards.read(i) for i in range(4)]


def test_corrupt_images_are_skipped_and_counted(tmp_path, photos):
    (tmp_path / "good.jpg").write_bytes(image_bytes(photos[0].resize((64, 64))))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = TwoViewDataset(open_source(str(tmp_path)), AugmentConfig(size=32), seed=0)
    assert [ds.source.item_id(i) for i in range(2)] == ["bad.jpg", "good.jpg"]
    v1, v2, skipped = collate_views([ds[(0, 0)], ds[(0, 1)]])
    assert skipped == 1 and v1.shape == (2, 3, 32, 32) and v1.dtype == torch.uint8  # the batch keeps its size


def test_empty_and_missing_sources_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="empty"):
        TwoViewDataset(open_source(str(tmp_path)), AugmentConfig(), 0)


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    full = list(ResumableSampler(20, per_epoch=8, seed=3, end_epoch=3))
    assert len(full) == 24 and {e for e, _ in full} == {0, 1, 2}
    resumed = list(ResumableSampler(20, per_epoch=8, seed=3, start_epoch=1, start=4, end_epoch=3))
    assert resumed == full[12:]
    r0 = ResumableSampler(20, per_epoch=8, world_size=2, rank=0, seed=3).epoch_indices(0)
    r1 = ResumableSampler(20, per_epoch=8, world_size=2, rank=1, seed=3).epoch_indices(0)
    assert len(r0) == len(r1) == 8 and not set(r0) & set(r1)
