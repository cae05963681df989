"""Images that share a part: ``byol-embed shared EMB`` (a folder embedded with ``run --regions``).

Pairs of images that are not near-duplicates as wholes but hold the same part: a logo, a watermark, the same
product on another background. Candidates are mutual nearest regions: a region of one image and a region of another
that are each among the other's ``--mutual`` nearest regions of other images (a distinctive part finds its copy
first; a patch of sky or wall has hundreds of equals and rarely a mutual one). A pair of images scores its best
mutual pair of regions and is kept at or above the threshold, with both boxes, unless the two images are
near-duplicates as wholes: half or more of either image's regions match the other at the threshold (the same
picture, not a shared part), or, where the folder has a duplicate threshold (``calibrate``, ``dedup``) or
``--duplicate-threshold`` is given, their image vectors are at or above it (``dedup`` lists those).

The threshold is calibrated on the folder with its own model, the way ``calibrate`` measures the duplicate
threshold: a part cut from one of its images (a square of 0.25-0.4 of the side the model sees) is pasted into
another of its images at another place and scale; the best match of the composite's regions to the part's image is
a positive, and the best match to a third, unrelated image a negative. The threshold is the lowest cosine whose
precision reaches ``--precision`` on those (else the best F1, with a warning). ``--threshold`` sets it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from curation.calibration import calibration_for, choose_threshold
from curation.errors import CurationError
from curation.neighbours import EXACT_LIMIT, knn
from curation.regions import decoded, folder_codec, window_boxes
from curation.results import SHARED_PARTS, write_result
from hub.preprocess import decode_image
from storage.folder import Manifest, iter_region_rows, load_rows, open_input
from storage.store import Store, as_store

DEFAULT_PRECISION = 0.9
DEFAULT_SAMPLE = 48  # composites made to calibrate
DEFAULT_MUTUAL = 3
WHOLE_SHARE = 0.5  # a pair where this share of either image's regions match is the same picture, not a shared part


class RegionEmbedder(Protocol):
    """What the calibration needs of a model: images' region vectors exactly as the folder's run made them."""

    def region_vectors(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, windows, dims)`` unit float32 (the folder's codec's reduction of its region layer)."""
        ...


def composite(part_of: Image.Image, into: Image.Image, seen_a: tuple[float, float, float],
              seen_b: tuple[float, float, float], rng: np.random.Generator) -> Image.Image:
    """A square part of ``part_of`` (inside what the model sees of it) pasted into ``into`` at another place and
    scale (inside what the model sees of that)."""
    left, top, side = seen_a
    cut = side * rng.uniform(0.25, 0.4)
    x, y = left + rng.uniform(0, side - cut), top + rng.uniform(0, side - cut)
    part = part_of.convert("RGB").crop((int(x), int(y), int(x + cut), int(y + cut)))
    left, top, side = seen_b
    size = max(8, int(side * rng.uniform(0.25, 0.4)))
    out = into.convert("RGB").copy()
    out.paste(part.resize((size, size), Image.Resampling.BILINEAR),
              (int(left + rng.uniform(0, side - size)), int(top + rng.uniform(0, side - size))))
    return out


def calibrate_shared(store: Store, manifest: Manifest, ids: list[str], regions: np.ndarray, seen: np.ndarray,
                     model: RegionEmbedder, *, precision: float = DEFAULT_PRECISION, sample: int = DEFAULT_SAMPLE,
                     seed: int = 0) -> dict[str, Any]:
    """The threshold from composites (the module's docstring): ``regions`` is the folder's ``(images, windows,
    dims)`` unit vectors in the order of ``ids``."""
    n = len(ids)
    if n < 3:
        raise CurationError(f"shared parts need at least 3 embedded images, got {n}")
    source, position = open_input(store, manifest)
    rng = np.random.default_rng(seed)
    made, owners, strangers = [], [], []
    for _ in range(sample * 4):
        if len(made) >= sample:
            break
        a, b, c = rng.choice(n, 3, replace=False)
        try:
            img_a = decode_image(source.read(position[ids[a]]))
            img_b = decode_image(source.read(position[ids[b]]))
        except Exception:  # noqa: BLE001 - an image that no longer decodes is simply not sampled
            continue
        made.append(composite(img_a, img_b, tuple(seen[a]), tuple(seen[b]), rng))
        owners.append(int(a))
        strangers.append(int(c))
    if len(made) < 2:
        raise CurationError("shared parts could not read the folder's images again from its input "
                            f"{manifest.input} to calibrate; pass --threshold")
    vectors = model.region_vectors(made)
    positives = np.array([float((v @ regions[a].T).max()) for v, a in zip(vectors, owners)], np.float32)
    negatives = np.array([float((v @ regions[c].T).max()) for v, c in zip(vectors, strangers)], np.float32)
    chosen = choose_threshold(positives, negatives, precision)
    quant = (0.05, 0.5, 0.95)
    entry = {**chosen, "target_precision": precision, "composites": len(made),
             "positives": {f"{int(q * 100)}%": round(float(np.quantile(positives, q)), 4) for q in quant},
             "negatives": {f"{int(q * 100)}%": round(float(np.quantile(negatives, q)), 4) for q in quant},
             "rule": f"composites: a part of one image pasted into another, {len(made)} of them"}
    if not chosen["separable"]:
        entry["warning"] = (f"this model cannot tell a pasted part from an unrelated image's regions at precision "
                            f"{precision}: its best F1 is at cosine {chosen['threshold']} (precision "
                            f"{chosen['precision']}, recall {chosen['recall']}); the pairs will hold unrelated images. "
                            "Use a better-trained model, or --threshold")
    return entry


def shared_parts(folder: str | Path | Store, *, threshold: float | None = None, mutual: int = DEFAULT_MUTUAL,
                 layer: str | None = None, duplicate_threshold: float | None = None, model: RegionEmbedder | None = None,
                 precision: float = DEFAULT_PRECISION, sample: int = DEFAULT_SAMPLE, exact_limit: int = EXACT_LIMIT,
                 nprobe: int | None = None, progress: bool = False,
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find the pairs; write the ``shared_parts`` result; returns the summary with the top 10 pairs. ``model``
    calibrates the threshold where none is given (without one, ``threshold`` is needed)."""
    if mutual < 1:
        raise CurationError(f"--mutual must be >= 1, got {mutual}")
    if threshold is None and model is None:
        raise CurationError("shared parts calibrate their threshold with the folder's model; pass --threshold")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise CurationError(f"--threshold must be a cosine in [-1, 1], got {threshold}")
    store = as_store(folder, storage_options)
    manifest = Manifest.load(store)
    codec = folder_codec(store, manifest)
    parts = list(iter_region_rows(store, manifest, [p["name"] for p in manifest.parts]))
    ids = [i for p in parts for i in p.ids]
    paths = [x for p in parts for x in p.paths]
    seen = np.concatenate([p.seen for p in parts]) if parts else np.zeros((0, 3), np.float32)
    windows = len(codec.windows)
    x = decoded(codec, np.concatenate([p.codes for p in parts])) if parts else np.zeros((0, codec.dims), np.float32)
    n = len(ids)
    calibration: dict[str, Any] = {"rule": "set (--threshold)"}
    if threshold is None:
        calibration = calibrate_shared(store, manifest, ids, x.reshape(n, windows, -1), seen, model,
                                       precision=precision, sample=sample)
        threshold = calibration["threshold"]
    layer = manifest.pick_layer(layer)
    whole = load_rows(store, manifest, layer)
    position = {whole.ids[int(r)]: j for j, r in enumerate(whole.embedded)}
    image_vectors = whole.vectors[[position[i] for i in ids]]
    if duplicate_threshold is None:
        entry = calibration_for(store, manifest, layer)
        duplicate_threshold = float(entry["threshold"]) if entry else None
    # each region's nearest regions of other images (its own image's windows come first: ask for that many more)
    sims, nn, info = knn(x, mutual + windows, exact_limit=exact_limit, nprobe=nprobe, progress=progress)
    owner = np.repeat(np.arange(n), windows)
    mine = np.repeat(owner[:, None], nn.shape[1], axis=1)
    theirs = np.where(nn >= 0, owner[np.maximum(nn, 0)], -1)
    other_image = (nn >= 0) & (theirs != mine)
    rank = np.cumsum(other_image, axis=1)  # 1: the nearest region of another image
    near = other_image & (rank <= mutual)
    nearest = {(int(r), int(nn[r, c])) for r, c in zip(*np.nonzero(near))}
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    for region, column in zip(*np.nonzero(near & (sims >= threshold))):
        other = int(nn[region, column])
        if (other, int(region)) not in nearest:  # not mutual
            continue
        a, wa, b, wb = int(owner[region]), int(region % windows), int(owner[other]), int(other % windows)
        if a > b:
            a, wa, b, wb = b, wb, a, wa
        score = float(sims[region, column])
        if (a, b) not in best or score > best[(a, b)][0]:
            best[(a, b)] = (score, wa, wb)
    rows = []
    regions = x.reshape(n, windows, -1)
    for (a, b), (score, wa, wb) in best.items():
        cosine = float(image_vectors[a] @ image_vectors[b])
        if duplicate_threshold is not None and cosine >= duplicate_threshold:  # dedup's business
            continue
        match = regions[a] @ regions[b].T >= threshold
        if max(match.any(axis=1).mean(), match.any(axis=0).mean()) >= WHOLE_SHARE:  # the same picture, not a part
            continue
        rows.append((score, a, b, wa, wb, cosine))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))

    def box(image: int, window: int) -> list[float]:
        return [round(float(v), 1) for v in window_boxes(codec.windows[window:window + 1], codec.grid,
                                                          tuple(float(s) for s in seen[image]))[0]]

    summary = {"layer": manifest.regions["layer"], "image_layer": layer, "threshold": round(float(threshold), 4),
               "calibration": calibration, "duplicate_threshold": duplicate_threshold, "mutual": mutual,
               "generation": manifest.generation, "images": n, "regions": int(len(x)), "pairs": len(rows),
               "images_in_pairs": len({i for r in rows for i in r[1:3]}), "search": info}
    write_result(store, SHARED_PARTS, {
        "id": [ids[r[1]] for r in rows], "path": [paths[r[1]] for r in rows],
        "id_b": [ids[r[2]] for r in rows], "path_b": [paths[r[2]] for r in rows],
        "similarity": [r[0] for r in rows], "box": [box(r[1], r[3]) for r in rows],
        "box_b": [box(r[2], r[4]) for r in rows], "whole": [r[5] for r in rows],
        "kind": ["shared part"] * len(rows)}, summary)
    top = [{"id": ids[r[1]], "id_b": ids[r[2]], "similarity": round(r[0], 4), "whole": round(r[5], 4)}
           for r in rows[:10]]
    return {**summary, "top": top}
