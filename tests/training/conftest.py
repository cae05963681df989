"""Shared by the training tests: real photos in a folder, and the trainer run through its launchers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import processes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "training" / "pretrain.py")
SMALL = ["--batch-size-per-device", "4", "--total-batch-size", "8", "--num-workers", "0"]


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


def run(args: list[str], launcher: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = launcher or ["accelerate", "launch", "--cpu", "--num_processes", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return processes.run([*launcher, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
