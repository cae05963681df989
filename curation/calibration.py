"""The near-duplicate threshold of one folder, measured on its own images with its own model.

A fixed cosine does not carry from one model to another: a weak or anisotropic model puts unrelated photos at 0.8
and above. So ``byol-embed calibrate`` (and ``dedup`` / ``leaks`` when the folder has no calibration yet):

1. samples ``--sample`` embedded images of the folder (deterministic: the same seed, the same sample) and reads
   them again from the folder's input;
2. makes near-duplicate copies of each, the usual ways an image is copied: re-encoded as JPEG at quality 20,
   halved, cropped to 90 %, brightness +10 % and -10 %;
3. embeds the copies with the folder's model, layer and pooling: the caller passes it in (``byol-embed`` passes
   the folder's own model, ``service.embed.model.FolderModel``); without one, nothing is measured and the fixed
   ``DEFAULT_THRESHOLD`` is used, which the summary says;
4. positives: each copy's cosine to its original's stored vector. Negatives: each copy's nearest image of the
   folder other than its original (among its ``k`` nearest). A neighbour that is itself a copy of the original (the same bytes, or the
   same picture by its pixels: a 16 x 16 grey thumbnail correlating >= ``PIXEL_COPY`` with the original's, which
   the synthetic copies all do) is the folder's own duplicate, not a negative, and is left out;
5. precision(T) = positives >= T / (positives >= T + negatives >= T), recall(T) = positives >= T / positives: the
   threshold is the lowest T whose precision reaches ``--precision`` (so the recall is the highest possible at
   that precision). Where no T reaches it with a recall of at least ``MIN_RECALL``, the model cannot tell copies
   from distinct images at that precision: the threshold with the best F1 is taken, and the calibration says so
   in its ``warning``.

Written to ``curation/calibration.json`` (one entry per layer), with the model's weights it was measured on: a
calibration of another model is never used.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageEnhance

from curation.errors import CurationError
from curation.neighbours import knn_of
from curation.results import CALIBRATION, ResultReader, write_result
from hub.preprocess import decode_image
from storage.folder import Manifest, Rows, open_input
from storage.store import Store

logger = logging.getLogger(__name__)

# The cosine at or above which two images are near duplicates where nothing was measured (no model to calibrate
# with, or its input gone): measured on the README's fixture (copies of real photos re-encoded at JPEG quality 20,
# halved, cropped to 90 %, brightness +-10 %, mixed with distinct photos).
DEFAULT_THRESHOLD = 0.86
DEFAULT_PRECISION = 0.95
DEFAULT_SAMPLE = 64
MIN_RECALL = 0.5
PIXEL_COPY = 0.9  # thumbnail correlation at or above which two images are the same picture (see pixel_signature)
TRANSFORMS = ("jpeg_q20", "half", "crop_90", "brighter_10", "darker_10")


class Embedder(Protocol):
    """What calibration needs of a model: the folder's vectors of more images, exactly as its run made them."""

    def embed(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        """L2-normalized ``(len(images), dim)`` float32 vectors of ``layer``."""
        ...


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise CurationError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")


def copies_of(img: Image.Image) -> list[Image.Image]:
    """The near-duplicate copies of ``img`` (in ``TRANSFORMS``' order)."""
    img = img.convert("RGB")
    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=20)
    return [Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
            img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR),
            img.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
            ImageEnhance.Brightness(img).enhance(1.1),
            ImageEnhance.Brightness(img).enhance(0.9)]


def pixel_signature(img: Image.Image) -> np.ndarray:
    """A 16 x 16 grey thumbnail, mean removed and scaled to unit norm: the dot product of two is their
    correlation (copies re-encoded, resized, slightly cropped or brightened stay above ``PIXEL_COPY``)."""
    thumb = np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BOX), np.float32).ravel()
    thumb -= thumb.mean()
    norm = np.linalg.norm(thumb)
    return thumb / norm if norm > 0 else thumb


def choose_threshold(positives: np.ndarray, negatives: np.ndarray, precision: float) -> dict[str, Any]:
    """The lowest cosine whose precision reaches ``precision`` (else the best F1), with its precision and
    recall."""
    candidates = np.unique(np.round(positives, 4))
    pos = np.sort(positives)
    neg = np.sort(negatives)
    best_f1: tuple[float, float, float, float] | None = None
    for t in candidates:  # ascending: the first that reaches the precision has the highest recall
        tp = len(pos) - np.searchsorted(pos, t - 1e-6)
        fp = len(neg) - np.searchsorted(neg, t - 1e-6)
        p = tp / max(1, tp + fp)
        r = tp / max(1, len(pos))
        if p >= precision and r >= MIN_RECALL:
            return {"threshold": round(float(t), 4), "precision": round(float(p), 4), "recall": round(float(r), 4),
                    "separable": True}
        f1 = 2 * p * r / max(p + r, 1e-9)
        if best_f1 is None or f1 > best_f1[0]:
            best_f1 = (f1, float(t), p, r)
    f1, t, p, r = best_f1 if best_f1 is not None else (0.0, 1.0, 0.0, 0.0)
    return {"threshold": round(t, 4), "precision": round(p, 4), "recall": round(r, 4), "separable": False}


def calibrate(store: Store, manifest: Manifest, rows: Rows, *, layer: str, precision: float = DEFAULT_PRECISION,
              sample: int = DEFAULT_SAMPLE, k: int = 16, seed: int = 0, model: Embedder) -> dict[str, Any]:
    """Measure this folder's near-duplicate threshold on ``layer`` (``rows``: its loaded vectors) with ``model``
    (the folder's own); returns the calibration entry (also written into ``curation/calibration.json``)."""
    check_calibration(precision, sample)
    started = time.perf_counter()
    if len(rows.vectors) < 3:
        raise CurationError(f"calibration needs at least 3 embedded images; this folder has {len(rows.vectors)}")
    source, position = open_input(store, manifest)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows.vectors))
    originals: list[int] = []  # vector rows
    images: list[Image.Image] = []
    for v in order:
        if len(originals) >= sample:
            break
        item = position.get(rows.ids[int(rows.embedded[v])])
        if item is None:
            continue
        try:
            img = decode_image(source.read(item))
        except Exception:  # noqa: BLE001 - an image that no longer decodes is simply not sampled
            continue
        originals.append(int(v))
        images.append(img)
    if len(originals) < 2:
        raise CurationError("calibration could not read the folder's images again from its input "
                            f"{manifest.input}: it needs the input where the run read it")
    copies = [c for img in images for c in copies_of(img)]
    per = len(TRANSFORMS)
    vectors = model.embed(copies, layer)
    owner = np.repeat(np.asarray(originals), per)
    positives = np.einsum("qd,qd->q", vectors, rows.vectors[owner])
    # negatives: each copy's nearest images of the folder, its original and the original's own copies left out
    sims, nn = knn_of(rows.vectors, vectors, k + 1)
    digest_of = [rows.sha256[int(rows.embedded[v])] for v in range(len(rows.vectors))]
    signatures = {v: pixel_signature(img) for v, img in zip(originals, images)}
    same_picture: dict[tuple[int, int], bool] = {}
    floor = float(np.quantile(positives, 0.02)) - 0.05  # below every plausible threshold: never read
    negatives: list[float] = []
    left_out = 0
    for q in range(len(vectors)):
        orig = int(owner[q])
        for s, j in zip(sims[q], nn[q]):
            j = int(j)
            if j < 0 or j == orig:
                continue
            if digest_of[j] is not None and digest_of[j] == digest_of[orig]:
                left_out += 1
                continue
            if s >= floor:  # a close neighbour: is it the same picture? (read once per pair)
                key = (orig, j)
                if key not in same_picture:
                    same_picture[key] = _same_picture(source, position, rows, j, signatures[orig])
                if same_picture[key]:
                    left_out += 1
                    continue
            negatives.append(float(s))
            break  # the nearest distinct image only
    negatives_arr = np.asarray(negatives, np.float32)
    chosen = choose_threshold(positives, negatives_arr, precision)
    quant = (0.05, 0.25, 0.5, 0.75, 0.95)
    entry = {
        "layer": layer, **chosen, "target_precision": precision,
        "model": manifest.model_id, "weights_sha256": manifest.weights_sha256, "generation": manifest.generation,
        "sample": len(originals), "copies": len(copies), "transforms": list(TRANSFORMS), "k": k,
        "positives": {f"{int(q * 100)}%": round(float(np.quantile(positives, q)), 4) for q in quant},
        "negatives": {f"{int(q * 100)}%": round(float(np.quantile(negatives_arr, q)), 4) for q in quant}
        if len(negatives_arr) else {},
        "negatives_left_out_as_copies": left_out,
        "seconds": round(time.perf_counter() - started, 2),
    }
    per_transform = {}
    for t, name in enumerate(TRANSFORMS):
        mine = positives[t::per]
        per_transform[name] = round(float((mine >= chosen["threshold"]).mean()), 4)
    entry["recall_by_transform"] = per_transform
    if not chosen["separable"]:
        entry["warning"] = (f"this model cannot tell near-duplicate copies from distinct images on {layer} at "
                            f"precision {precision} (and recall >= {MIN_RECALL}): its best F1 is at cosine "
                            f"{chosen['threshold']}, precision {chosen['precision']}, recall {chosen['recall']}; copies sit at a median cosine of "
                            f"{entry['positives']['50%']}, the nearest distinct images at "
                            f"{entry['negatives'].get('50%')}. Its duplicate groups will hold distinct images: use a "
                            "better-trained model, or another --layer")
        logger.warning("calibration: %s", entry["warning"])
    saved = load_calibrations(store)
    saved[layer] = entry
    write_result(store, CALIBRATION, None, saved)
    return entry


def check_calibration(precision: float, sample: int) -> None:
    if not 0.0 < precision < 1.0:
        raise CurationError(f"--precision is a fraction in (0, 1), got {precision}")
    if sample < 2:
        raise CurationError(f"--sample must be >= 2, got {sample}")


def _same_picture(source: Any, position: dict[str, int], rows: Rows, vector_row: int, signature: np.ndarray) -> bool:
    item = position.get(rows.ids[int(rows.embedded[vector_row])])
    if item is None:
        return False
    try:
        other = pixel_signature(decode_image(source.read(item)))
    except Exception:  # noqa: BLE001
        return False
    return float(other @ signature) >= PIXEL_COPY


def load_calibrations(store: Store) -> dict[str, Any]:
    """Every layer's calibration entry (``{}``: none)."""
    saved = ResultReader(store, CALIBRATION).summary()
    return {layer: entry for layer, entry in saved.items() if isinstance(entry, dict)}


def calibration_for(store: Store, manifest: Manifest, layer: str) -> dict[str, Any] | None:
    """The folder's calibration of ``layer``, if it was measured with the folder's current model's weights."""
    return calibration_of(load_calibrations(store), manifest, layer)


def calibration_of(saved: dict[str, Any], manifest: Manifest, layer: str | None) -> dict[str, Any] | None:
    """``layer``'s entry of a calibration summary, if it was measured with ``manifest``'s model's weights."""
    entry = saved.get(layer) if layer else None
    if isinstance(entry, dict) and entry.get("weights_sha256") == manifest.weights_sha256:
        return entry
    return None


def resolve_threshold(store: Store, manifest: Manifest, rows: Rows, layer: str, threshold: float | None, *,
                      model: Embedder | None, precision: float = DEFAULT_PRECISION, sample: int = DEFAULT_SAMPLE,
                      fallback: float = DEFAULT_THRESHOLD) -> tuple[float, dict[str, Any]]:
    """The threshold to use: ``threshold`` if given; else the folder's calibration (measured now with ``model`` if
    there is none); else (no model given, or it or the input cannot be read again) ``fallback`` and why. Returns it
    and a note for the summary."""
    if threshold is not None:
        return threshold, {"source": "--threshold"}
    entry = calibration_for(store, manifest, layer)
    if entry is None:
        if model is None:
            why = "no model to calibrate with (the folder's vectors were imported, or none was given)"
            logger.warning("no calibration (%s); using the fixed default threshold %s", why, fallback)
            return fallback, {"source": "default", "why": why}
        try:
            entry = calibrate(store, manifest, rows, layer=layer, precision=precision, sample=sample, model=model)
        except Exception as err:  # noqa: BLE001 - the model or the input may be gone: the fixed default, said so
            logger.warning("no calibration (%s); using the fixed default threshold %s", err, fallback)
            return fallback, {"source": "default", "why": f"calibration failed: {err}"}
        note = {"source": "calibrated now"}
    else:
        note = {"source": "curation/calibration.json"}
    note.update({k: entry[k] for k in ("precision", "recall", "separable", "target_precision") if k in entry})
    if "warning" in entry:
        note["warning"] = entry["warning"]
    return float(entry["threshold"]), note
