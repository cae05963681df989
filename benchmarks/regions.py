"""Search inside images on a planted set: does a part of an image find the images that contain it, where whole-image
search (``avgpool``) does not? The first measurement for issue #37, on :mod:`curation.regions` (exact region
vectors, no index yet).

    python benchmarks/regions.py                      # 600 photos, 4 objects planted in 15 each, feature4
    python benchmarks/regions.py --layer feature3 --images 1200

The set: crops, flips and colour shifts of the photos that ship with scikit-image and scikit-learn, each 320x240,
with one of four objects pasted into ``--per-object`` of them (a drawn logo, a drawn label with text, a crop of
scikit-image's coins and of its cameraman) at 5-20 % of the image's area, at a random place and scale. Queries:
each object on its own, then a box around it in one photo that holds it (that photo left out of its results).

Printed per model and query kind: recall@10 (of min(10, positives)) and mAP of the images holding the object, for
region search (each image scored by its best window) and for whole-image search on the same queries. Models: a
random initialisation and the test suite's trained ResNet-18 (a short BYOL run on scikit-image's photos, the
weakest model that has learned anything), so that what training adds is seen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.regions import box_vector, crop_box, pool_windows, windows  # noqa: E402
from hub import BYOLModel  # noqa: E402
from hub.config import PreprocessConfig  # noqa: E402
from hub.preprocess import preprocess  # noqa: E402
from tests.support.planted import SIZE, planted_set  # noqa: E402


def features(model: BYOLModel, images: list[Image.Image], layer: str) -> tuple[np.ndarray, np.ndarray]:
    maps, pooled = [], []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            x = torch.from_numpy(preprocess(images[start:start + 32], PreprocessConfig()))
            out = model.features(x, [layer, "avgpool"], pooling="none")
            maps.append(out[layer].numpy())
            pooled.append(out["avgpool"].numpy())
    return np.concatenate(maps), np.concatenate(pooled)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _scores(truth: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-scores)
    hits = truth[order]
    recall = hits[:10].sum() / min(10, truth.sum())
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(recall), float((precision * hits).sum() / hits.sum())


def measure(model: BYOLModel, name: str, images, holds, boxes, objs, layer: str) -> None:
    started = time.perf_counter()
    maps, pooled = features(model, images, layer)
    wins = windows(maps.shape[-1])
    regions = np.stack([pool_windows(m, wins) for m in maps])  # (images, windows, C)
    centre = regions.reshape(-1, regions.shape[-1]).mean(axis=0)
    regions = _unit(regions - centre)
    whole = _unit(pooled - pooled.mean(axis=0))
    query_maps, query_pooled = features(model, objs, layer)
    seen = crop_box(SIZE[0], SIZE[1], PreprocessConfig().resize_size, PreprocessConfig().crop_size)
    rows = {"object alone": [], "box in a photo": []}
    for k in range(len(objs)):
        truth = holds == k
        part = _unit(query_maps[k].mean(axis=(1, 2)) - centre)
        rows["object alone"].append((*_scores(truth, (regions @ part).max(axis=1)),
                                     *_scores(truth, whole @ _unit(query_pooled[k] - pooled.mean(axis=0)))))
        j = int(np.flatnonzero(truth)[0])  # a box around the object in its first photo; that photo left out
        part = _unit(box_vector(maps[j], boxes[j], seen) - centre)
        keep = np.arange(len(images)) != j
        rows["box in a photo"].append((*_scores(truth[keep], (regions[keep] @ part).max(axis=1)),
                                       *_scores(truth[keep], whole[keep] @ whole[j])))
    print(f"{name}, {layer} ({maps.shape[-1]}x{maps.shape[-1]} grid, {len(wins)} windows an image, "
          f"{time.perf_counter() - started:.1f} s):")
    for kind, got in rows.items():
        r = np.array(got)
        print(f"  {kind:>14}: recall@10 regions {r[:, 0].mean():.2f} vs whole image {r[:, 2].mean():.2f} "
              f"({r[:, 0].mean() / max(r[:, 2].mean(), 1e-9):.1f}x); mAP {r[:, 1].mean():.2f} vs {r[:, 3].mean():.2f}"
              f"   per object: {' '.join(f'{v:.1f}' for v in r[:, 0])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="photos in the set (default 600)")
    parser.add_argument("--per-object", type=int, default=15, help="photos holding each object (default 15)")
    parser.add_argument("--layer", default="feature4", help="the layer whose grid is searched (default feature4)")
    args = parser.parse_args()
    from hub.hardware import cpu_summary
    from tests.support.images import PHOTOS, skimage_data_dir
    from tests.support.models import train_test_model

    print(f"machine: {cpu_summary()}")
    images, holds, boxes, objs = planted_set(args.images, args.per_object)
    print(f"{len(images)} photos, {len(objs)} objects in {args.per_object} photos each")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="byol-regions-") as tmp:
        trained = BYOLModel.from_pretrained(str(train_test_model(Path(tmp), [skimage_data_dir() / n for n in PHOTOS])))
    for name, model in (("random initialisation", BYOLModel(trained.config)), ("test-trained", trained)):
        measure(model.eval(), name, images, holds, boxes, objs, args.layer)


if __name__ == "__main__":
    main()
