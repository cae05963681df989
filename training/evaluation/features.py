"""Frozen-backbone features, extracted once (eval mode, the model's own preprocessing) and cached on disk.

The cache is keyed by the model's weights sha256, the dataset's fingerprint, the layers and the pooling,
and written in chunks, so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hub.layers import output_name
from hub.model import BYOLModel
from hub.preprocess import preprocess_one, to_rgb
from storage.files import cache_root
from training.evaluation.data import LabeledImages

logger = logging.getLogger(__name__)
CHUNK = 256


def features_cache() -> Path:
    return cache_root() / "features"


def feature_bytes(model: BYOLModel, layers: tuple[str, ...], pooling: str, count: int) -> int:
    dims = model.config.dims(pooling)
    return sum(int(dims[layer] or 0) for layer in layers) * count * 4


def check_fits(model: BYOLModel, layers: tuple[str, ...], pooling: str, count: int, folder: Path,
               limit_gb: float) -> None:
    """Refuse the ``fast`` mode where its cache would not fit (ImageNet mhead features: ~225 GB)."""
    need = feature_bytes(model, layers, pooling, count)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > limit_gb * 2**30 or need > 0.9 * free:
        raise ValueError(
            f"the fast mode would cache {need / 2**30:.1f} GiB of {pooling} features for {count} images "
            f"(limit {limit_gb:g} GiB, {free / 2**30:.0f} GiB free in {folder}); use --mode faithful, "
            "or raise --max-cache-gb")


def _load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def onnx_session(model: BYOLModel):
    """An ONNX Runtime session on the model folder's ``model.onnx`` when it was exported from these exact
    weights (faster than torch on CPU: ~3x for a ResNet-50), else ``None``."""
    folder = getattr(model, "source", {}).get("folder")
    onnx = model.config.onnx
    if not folder or not onnx or onnx.get("weights_sha256") != model.config.weights_sha256:
        return None
    path = Path(folder) / onnx.get("file", "model.onnx")
    if not path.exists() or next(model.parameters()).device.type != "cpu":
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.inference_mode()
def features_of(model: BYOLModel, paths: list[Path], layers: tuple[str, ...], pooling: str,
                batch_size: int = 64, session=None) -> dict[str, np.ndarray]:
    """Center-crop features of ``paths`` without caching (e.g. the training-time kNN monitor).

    With an ONNX Runtime ``session`` (see :func:`onnx_session`) the graph's ``gap`` / ``.mhead`` outputs
    are used; otherwise the torch model."""
    parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    param = next(model.parameters())
    names = {layer: output_name(layer, pooling) for layer in layers}
    if session is not None and (pooling not in ("gap", "mhead") or
                                not set(names.values()) <= {o.name for o in session.get_outputs()}):
        session = None
    for start in range(0, len(paths), batch_size):
        pixels = np.stack([preprocess_one(_load(p), model.config.preprocessing) for p in paths[start:start + batch_size]])
        if session is not None:
            values = session.run(list(names.values()), {"pixel_values": pixels})
            for layer, value in zip(layers, values):
                parts[layer].append(value)
            continue
        out = model.features(torch.from_numpy(pixels).to(param.device, param.dtype), layers, pooling)
        for layer in layers:
            parts[layer].append(out[layer].float().cpu().numpy())
    return {layer: np.concatenate(v) for layer, v in parts.items()}


@torch.inference_mode()
def extract(model: BYOLModel, data: LabeledImages, layers: tuple[str, ...], pooling: str, *,
            batch_size: int = 64, max_cache_gb: float = 50.0, progress: bool = True) -> dict[str, np.ndarray]:
    """``{layer: (N, D) float32}`` for every image of ``data``, from the cache when present."""
    from tqdm.auto import tqdm

    key = hashlib.sha256(json.dumps([model.config.weights_sha256 or "unsaved", data.fingerprint(), layers, pooling,
                                     model.config.to_dict()["preprocessing"]]).encode()).hexdigest()[:20]
    folder = features_cache() / key
    check_fits(model, layers, pooling, len(data.paths), folder, max_cache_gb)
    model.eval()
    chunks = (len(data.paths) + CHUNK - 1) // CHUNK
    session = onnx_session(model)
    bar = tqdm(total=len(data.paths), desc=f"features {data.name}" + (" (onnx)" if session else ""), unit="img",
               disable=not progress)
    for c in range(chunks):
        done = folder / f"chunk_{c:05d}.npz"
        paths = data.paths[c * CHUNK:(c + 1) * CHUNK]
        if done.exists():
            bar.update(len(paths))
            continue
        part = features_of(model, paths, layers, pooling, batch_size, session)
        bar.update(len(paths))
        tmp = folder / f".chunk_{c:05d}.tmp.npz"
        np.savez(tmp, **part)
        os.replace(tmp, done)
    bar.close()
    loaded = [np.load(folder / f"chunk_{c:05d}.npz") for c in range(chunks)]
    return {layer: np.concatenate([chunk[layer] for chunk in loaded]) for layer in layers}
