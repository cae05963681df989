"""Time BYOL's two-view augmentation (decode + both views), images/s on one core, against lightly's
``BYOLTransform`` in the same run, on the same JPEG bytes and the same view recipe at 224x224.

    python benchmarks/augment.py [--images 64] [--rounds 3]

Ours: the training loader's own path for the default backend (``opencv``: OpenCV decode straight to an array,
crop + area/cubic resize, jitter as saturating uint8 blends, OpenCV HSV hue and Gaussian blur) and for ``pil``
(PIL decode, crop+resize in one resampling pass, PIL colour ops); both apply the same drawn parameters
(``training.augment.draw_view``). Views are uint8; the float conversion and normalization run batched in the
training step (``to_device_views``), and that cost is included here. Lightly: PIL decode, torchvision
transforms, ToTensor + Normalize per view. Every library runs on one thread (torch and OpenCV pinned to 1).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image


def sample_jpegs(count: int) -> list[bytes]:
    """ImageNet-like JPEGs (about 500x375) cut from the photos that ship with scikit-image."""
    import skimage

    root = Path(skimage.__file__).parent / "data"
    photos = [Image.open(root / n).convert("RGB") for n in
              ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")]
    out, rng = [], np.random.default_rng(0)
    for i in range(count):
        img = photos[i % len(photos)]
        scale = 500 / max(img.size) * rng.uniform(0.9, 1.1)
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def ours(jpegs: list[bytes], backend: str = "pil") -> None:
    from hub.config import IMAGENET_MEAN, IMAGENET_STD
    from hub.preprocess import to_rgb
    from training.augment import AugmentConfig, decode_rgb, sample_rng, two_views
    from training.data import collate_views, to_device_views

    cfg = AugmentConfig(size=224)
    items = []
    for i, data in enumerate(jpegs):  # the training loader's own decode for each backend
        if backend == "opencv":
            rgb = decode_rgb(data)
        else:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                rgb = to_rgb(img)
        items.append((*two_views(rgb, cfg, sample_rng(0, 0, i), backend), 0))
    for start in range(0, len(items), 32):
        v1, v2, _ = collate_views(items[start:start + 32])
        to_device_views(v1, torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD, False)
        to_device_views(v2, torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD, False)


def lightly(jpegs: list[bytes]) -> None:
    from lightly.transforms import BYOLTransform

    transform = BYOLTransform()
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as img:
            transform(img.convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="JPEGs per round (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per implementation (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:  # one thread for every library: "per core" means one core
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    jpegs = sample_jpegs(args.images)
    impls = {"ours": lambda j: ours(j, "opencv"), "ours-pil": ours, "lightly": lightly}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(args.rounds + 1):
        for name, fn in impls.items():
            try:
                start = time.perf_counter()
                fn(jpegs)
                if r:
                    times[name].append(time.perf_counter() - start)
            except ImportError as err:
                print(f"{name} skipped: {err} (pip install -e '.[bench]')")
                times[name] = []
    from hub.hardware import cpu_summary

    print(f"two-view augmentation at 224x224, {args.images} JPEGs of ~500x375, one thread; CPU: {cpu_summary()}")
    ips = {name: args.images / statistics.median(ts) for name, ts in times.items() if ts}
    for name, value in ips.items():
        print(f"  {name:<11} {value:7.1f} images/s per core")
    if "ours" in ips and "lightly" in ips:
        print(f"  ratio ours / lightly: {ips['ours'] / ips['lightly']:.2f}x  (default --augment-backend opencv)")
        if "ours-pil" in ips:
            print(f"  ratio ours-pil / lightly: {ips['ours-pil'] / ips['lightly']:.2f}x  (--augment-backend pil)")


if __name__ == "__main__":
    main()
