"""The training tests' photos in a folder (the trainer's launchers: :mod:`tests.support.training`)."""

from __future__ import annotations

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, photo_paths):
    """18 real photos (scikit-image's, shrunk, plus crops and rotations) in an ImageFolder-like tree, and one corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(photo_paths):
        img = Image.open(path).convert("RGB")
        img.thumbnail((160, 160))
        (root / f"class{i % 2}").mkdir(exist_ok=True)
        img.save(root / f"class{i % 2}" / f"{path.stem}.jpg", quality=90)
        w, h = img.size
        img.crop((0, 0, w * 2 // 3, h * 2 // 3)).save(root / f"class{i % 2}" / f"{path.stem}_crop.png")
        img.transpose(Image.Transpose.ROTATE_90).save(root / f"class{i % 2}" / f"{path.stem}_rot.png")
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root
