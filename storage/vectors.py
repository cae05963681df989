"""Vectors as the embedding folder stores and reads them: the one L2 normalization every reader applies."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (a zero row stays zero), float32. ``out``: where to write (``x`` itself
    to normalize in place); default a new contiguous array."""
    x = np.asarray(x, dtype=np.float32)
    if out is None:
        out = np.array(x, dtype=np.float32, order="C", copy=True)
    elif out is not x:
        out[...] = x
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    out /= np.where(norms > 0, norms, 1.0)
    return out
