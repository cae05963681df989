"""A model's feature quality without labels, from a matrix of its embeddings (groundwork of issue #38).

- **RankMe** (Garrido et al., ICML 2023): the effective rank of the embeddings, ``exp`` of the entropy of their
  normalized singular values. It reaches the dimension for features that use every direction equally, and falls
  towards 1 as they collapse. The paper found it tracks downstream accuracy across hyper-parameters of one method.
- **The standard deviation of the L2-normalized outputs**, per dimension and averaged (the collapse signal
  lightly logs): 0 for a collapsed model, ``1/sqrt(d)`` for outputs spread evenly over the sphere.

Plain numpy: it serves the trainer, ``byol-embed`` and the model card alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-7  # the paper's epsilon in p_k = sigma_k / ||sigma||_1 + eps


def rankme(x: np.ndarray) -> float:
    """The effective rank of ``(n, d)`` embeddings: ``exp(-sum p_k log p_k)``, ``p_k = sigma_k / sum sigma + eps``."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or min(x.shape) < 2:
        raise ValueError(f"RankMe needs an (n, d) matrix with n, d >= 2; got shape {x.shape}")
    sigma = np.linalg.svd(x, compute_uv=False)
    total = sigma.sum()
    if total <= 0:
        return 1.0
    p = sigma / total + EPS
    return float(np.exp(-(p * np.log(p)).sum()))


def normalized_std(x: np.ndarray) -> float:
    """The mean over dimensions of the standard deviation, across samples, of the L2-normalized rows."""
    x = np.asarray(x, np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return float(unit.std(axis=0).mean())


def label_free(x: np.ndarray) -> dict[str, Any]:
    """RankMe, its share of the dimension, and the normalized outputs' standard deviation with its ideal
    ``1/sqrt(d)``, for ``(n, d)`` embeddings (RankMe cannot exceed ``min(n, d)``: use n >= d samples)."""
    n, d = np.asarray(x).shape
    rank = rankme(x)
    return {"rankme": round(rank, 2), "rankme_share": round(rank / min(n, d), 4),
            "std": round(normalized_std(x), 5), "std_ideal": round(1 / np.sqrt(d), 5), "samples": int(n),
            "dim": int(d)}


def measure_images(model: Any, images: str, *, sample: int = 1024, layers: tuple[str, ...] | None = None,
                   batch_size: int = 64, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """:func:`label_free` per layer of ``model`` (a :class:`hub.BYOLModel`) on a random sample of the images under
    ``images`` (a folder, list, tar shards or Parquet: whatever ``storage.sources.open_source`` reads), each
    center-cropped by the model's own preprocessing and global-average pooled. Unreadable images are skipped
    and counted."""
    import io

    import torch
    from PIL import Image

    from hub.errors import HubError
    from hub.layers import LAYERS
    from hub.preprocess import preprocess_one, to_rgb
    from storage.sources import open_source

    if sample < 2:
        raise HubError(f"--sample must be >= 2, got {sample}")
    layers = tuple(layers or LAYERS)
    source = open_source(images)
    count = min(sample, len(source))
    picked = np.sort(np.random.default_rng(seed).choice(len(source), count, replace=False)) if count else []
    model = model.eval()
    parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    unreadable = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count, unit="img", desc="label-free")
    for start in range(0, count, batch_size):
        pixels = []
        for index in picked[start:start + batch_size]:
            try:
                with Image.open(io.BytesIO(source.read(int(index)))) as img:
                    img.load()
                    pixels.append(preprocess_one(to_rgb(img), model.config.preprocessing))
            except Exception:
                unreadable += 1
        if pixels:
            with torch.inference_mode():
                out = model.features(torch.from_numpy(np.stack(pixels)), layers, "gap")
            for layer in layers:
                parts[layer].append(out[layer].float().numpy())
        if bar is not None:
            bar.update(min(batch_size, count - start))
    if bar is not None:
        bar.close()
    read = sum(len(p) for p in parts[layers[0]])
    if read < 2:
        raise HubError(f"{images}: {read} readable images of {count} sampled; RankMe needs at least 2")
    return {"images": images, "sampled": int(count), "unreadable": unreadable,
            "layers": {layer: label_free(np.concatenate(parts[layer])) for layer in layers}}
