"""Weighted kNN on L2-normalized features (InstDisc's rule: votes weighted by exp(cos / T))."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def weighted_knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 ks: tuple[int, ...] = (20, 200), temperature: float = 0.07, chunk: int = 1024) -> dict[int, float]:
    """Top-1 accuracy (%) for each ``k`` (capped at the training set size). Features: ``(N, D)``.

    Computed in float32 whatever autocast is active (the trainer's monitor runs under bf16 autocast on CPU)."""
    with torch.autocast("cpu", enabled=False):
        return _weighted_knn(train_x, train_y, test_x, test_y, ks=ks, temperature=temperature, chunk=chunk)


def _weighted_knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                  ks: tuple[int, ...], temperature: float, chunk: int) -> dict[int, float]:
    train = F.normalize(torch.from_numpy(train_x).float(), dim=1)
    test = F.normalize(torch.from_numpy(test_x).float(), dim=1)
    labels = torch.from_numpy(train_y).long()
    classes = int(max(train_y.max(), test_y.max())) + 1
    kmax = min(max(ks), len(train))
    correct = {k: 0 for k in ks}
    for start in range(0, len(test), chunk):
        sims, idx = (test[start:start + chunk] @ train.T).topk(kmax, dim=1)
        weights = (sims / temperature).exp()
        neighbors = labels[idx]
        truth = torch.from_numpy(test_y[start:start + chunk]).long()
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(len(idx), classes).scatter_add_(1, neighbors[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(1) == truth).sum())
    return {k: 100.0 * correct[k] / len(test) for k in ks}
