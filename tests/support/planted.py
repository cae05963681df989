"""A planted set for search inside images: photos that ship with scikit-image and scikit-learn, cropped, flipped and
colour-shifted, with drawn and cut-out objects pasted into some of them at 5-20 % of the image's area, at random
places and scales (``benchmarks/regions.py`` and the region tests)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

SIZE = (320, 240)
# the set the tests search (tests/conftest.py's regions_emb): 48 photos, each object in 8
LAYER = "feature3"
COUNT, PER_OBJECT = 48, 8


def backgrounds() -> list[Image.Image]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
              data.retina(), data.hubble_deep_field(), *load_sample_images().images]
    return [Image.fromarray(p).convert("RGB") for p in photos]


def objects() -> list[Image.Image]:
    from skimage import data

    logo = Image.new("RGB", (120, 120), (240, 240, 240))
    draw = ImageDraw.Draw(logo)
    draw.ellipse((10, 10, 110, 110), fill=(200, 30, 30))
    draw.rectangle((40, 40, 80, 80), fill=(20, 20, 160))
    draw.polygon([(60, 15), (20, 100), (100, 100)], outline=(255, 220, 0), width=6)
    label = Image.new("RGB", (160, 90), (250, 250, 210))
    draw = ImageDraw.Draw(label)
    draw.rectangle((4, 4, 155, 85), outline=(0, 90, 0), width=5)
    for row in range(3):
        draw.text((14, 12 + 24 * row), ["BYOL LABS", "batch 0427", "best before"][row], fill=(0, 0, 0))
    coins = Image.fromarray(data.coins()[150:300, 50:200]).convert("RGB")
    camera = Image.fromarray(data.camera()[50:250, 150:350]).convert("RGB")
    return [logo, label, coins, camera]


def planted_set(count: int, per_object: int, seed: int = 0, with_backgrounds: bool = False):
    """``count`` photos; the first ``per_object`` x 4 hold an object each (its index in ``holds``, -1: none).
    ``with_backgrounds``: also return which photo each was cropped from (crops of one photo share content)."""
    rng = np.random.default_rng(seed)
    bgs, objs = backgrounds(), objects()
    images, holds, boxes, sources = [], [], [], []
    for i in range(count):
        sources.append(int(rng.integers(len(bgs))))
        bg = bgs[sources[-1]]
        scale = rng.uniform(0.35, 0.9)
        w, h = int(bg.width * scale), int(bg.height * scale)
        x, y = int(rng.integers(0, bg.width - w + 1)), int(rng.integers(0, bg.height - h + 1))
        img = bg.crop((x, y, x + w, y + h)).resize(SIZE, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))).enhance(
            rng.uniform(0.6, 1.4))
        k, box = (i // per_object if i < per_object * len(objs) else -1), None
        if k >= 0:
            obj = objs[k]
            area = rng.uniform(0.05, 0.20) * SIZE[0] * SIZE[1]
            ow = int(np.sqrt(area * obj.width / obj.height))
            oh = int(ow * obj.height / obj.width)
            # inside the part the model sees (the centre crop: x 40..280 of 320)
            ox, oy = int(rng.integers(40, max(41, 280 - ow))), int(rng.integers(0, SIZE[1] - oh + 1))
            img.paste(obj.resize((ow, oh), Image.Resampling.BILINEAR), (ox, oy))
            box = (ox, oy, ox + ow, oy + oh)
        images.append(img)
        holds.append(k)
        boxes.append(box)
    if with_backgrounds:
        return images, np.array(holds), boxes, objs, np.array(sources)
    return images, np.array(holds), boxes, objs


def write_planted(folder, count: int, per_object: int, seed: int = 0, objects_used: int = 4):
    """The planted set as JPEG files ``0000.jpg``.. in ``folder`` (made), with the objects as PNG files beside
    it (``object0.png``..); returns (holds, boxes) as :func:`planted_set` does."""
    from pathlib import Path

    folder = Path(folder)
    images, holds, boxes, objs = planted_set(count, per_object, seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / "images" / f"{i:04d}.jpg", quality=90)
    for k, obj in enumerate(objs[:objects_used]):
        obj.save(folder / f"object{k}.png")
    return holds, boxes
