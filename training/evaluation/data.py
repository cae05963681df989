"""Labeled images for evaluation: ImageFolder trees and the VOCdevkit layout."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import IMAGE_EXTENSIONS, DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


@dataclass(frozen=True)
class LabeledImages:
    """Image paths with integer labels (``labels``: ``(N,)`` for classes, ``(N, C)`` in {1, 0, -1} for VOC)."""

    name: str
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{int(stat.st_mtime)}".encode())
        return digest.hexdigest()[:16]


def image_folder(root: str | Path, name: str | None = None) -> LabeledImages:
    """``root/CLASS/**/image`` -> labels by sorted class folder (torchvision's ImageFolder order)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected an ImageFolder tree root/CLASS/image.jpg")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DataError(f"no images under {root}/<class>/; expected an ImageFolder tree")
    return LabeledImages(name or root.name, paths, np.asarray(labels), classes)


def voc(root: str | Path, split: str) -> LabeledImages:
    """VOCdevkit/VOC2007: ``ImageSets/Main/{cls}_{split}.txt`` lines ``ID {1|-1|0}`` (0 = difficult)."""
    root = Path(root)
    main = root / "ImageSets" / "Main"
    if not main.is_dir() or not (root / "JPEGImages").is_dir():
        raise DataError(f"{root} is not a VOC year folder (needs JPEGImages/ and ImageSets/Main/)")
    classes = [c for c in VOC_CLASSES if (main / f"{c}_{split}.txt").exists()]
    if not classes:
        raise DataError(f"no ImageSets/Main/<class>_{split}.txt in {root}")
    ids: list[str] = []
    table: dict[str, dict[str, int]] = {}
    for cls in classes:
        for line in (main / f"{cls}_{split}.txt").read_text().split("\n"):
            parts = line.split()
            if len(parts) == 2:
                if parts[0] not in table:
                    table[parts[0]] = {}
                    ids.append(parts[0])
                table[parts[0]][cls] = int(parts[1])
    labels = np.array([[table[i].get(c, -1) for c in classes] for i in ids], dtype=np.int8)
    paths = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} images listed in {split} are missing, e.g. {missing[0]}")
    return LabeledImages(f"{root.name}-{split}", paths, labels, classes)
