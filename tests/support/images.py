"""Images built from the photos that ship with scikit-image (no download), shared by the tests and benchmarks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def image_bytes(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_images(root: Path, photos: list[Image.Image], copies: int) -> list[str]:
    """Real photos, cropped and flipped into ``copies`` variants each, in nested folders; plus hostile files."""
    names = []
    for i, img in enumerate(photos):
        small = img.copy()
        small.thumbnail((140, 140))
        for c in range(copies):
            variant = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if c % 2 else small
            variant = variant.crop((c, 0, variant.width - c, variant.height))
            rel = f"photo{i}/{c:02d}.{'png' if c % 3 == 0 else 'jpg'}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            variant.save(root / rel)
            names.append(rel)
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = image_bytes(photos[0], "JPEG")
    (root / "bad" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (900, 900), (200, 10, 10)).save(root / "bad" / "huge.png")  # over --max-pixels below
    (root / "bad" / "notes.txt").write_text("not an image: never listed")
    return names + ["bad/corrupt.jpg", "bad/huge.png", "bad/truncated.jpg"]


def make_near_duplicate_fixture(photos, folder: Path, seed: int = 0) -> dict[str, str]:
    """Each photo as ``orig_<i>.jpg`` plus four copies (JPEG quality 20, halved, cropped to 90 %, brightness +10 %
    or -10 %); returns copy file -> original file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources: dict[str, str] = {}
    for i, photo in enumerate(photos):
        img = photo.convert("RGB")
        orig = f"orig_{i:02d}.jpg"
        img.save(folder / orig, quality=92)
        w, h = img.size
        copies = {
            "q20": img,
            "half": img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR),
            "crop": img.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
            "bright": ImageEnhance.Brightness(img).enhance(1.1 if rng.random() < 0.5 else 0.9),
        }
        for name, copy in copies.items():
            buf = io.BytesIO()
            copy.save(buf, "JPEG", quality=20 if name == "q20" else 90)
            (folder / f"copy_{i:02d}_{name}.jpg").write_bytes(buf.getvalue())
            sources[f"copy_{i:02d}_{name}.jpg"] = orig
    return sources


def pair_scores(duplicates: Path, sources: dict[str, str]) -> tuple[float, float]:
    """Pair precision and recall of the groups against the truth (an original and its copies are one group)."""
    table = pq.read_table(duplicates, columns=["group", "id"]).to_pydict()
    truth_of = {**{c: o for c, o in sources.items()}, **{o: o for o in set(sources.values())}}
    members: dict[int, list[str]] = {}
    for g, i in zip(table["group"], table["id"]):
        members.setdefault(g, []).append(i)
    found = {tuple(sorted((a, b))) for m in members.values() for x, a in enumerate(m) for b in m[x + 1:]}
    truth = set()
    by_orig: dict[str, list[str]] = {}
    for item, orig in truth_of.items():
        by_orig.setdefault(orig, []).append(item)
    for m in by_orig.values():
        truth |= {tuple(sorted((a, b))) for x, a in enumerate(m) for b in m[x + 1:]}
    hits = len(found & truth)
    return hits / max(1, len(found)), hits / max(1, len(truth))


# the real photographs among scikit-image's images (not the drawings, the synthetic ones, nor the right view of the
# motorcycle stereo pair, a near copy of the left one)
QUALITY_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "ihc.png", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg")


def photos_for_quality(folder: Path) -> list:
    return [Image.open(folder / name).convert("RGB") for name in QUALITY_PHOTOS]




def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A ``.tar`` (WebDataset's layout) holding ``(name, bytes)`` members, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def scan_bomb(side: int = 3000, repeats: int = 1000) -> bytes:
    """A valid progressive JPEG that costs a pass over its pixels per scan: a black ``side``² image whose last
    scan is repeated ``repeats`` times (a few bytes each: 77 KB for 1,000 at 3000²), libjpeg-turbo's LJT-01-003."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * repeats + b"\xff\xd9"
