"""VOC07 SVM and low-shot SVM (FAIR's self-supervision benchmark, as MMSelfSup runs it).

Per class, a LinearSVC (squared hinge, L2, class weight {1: 2, -1: 1}) on L2-normalized features;
difficult images (label 0) are left out of training and of the AP. Full SVM: cost from {1, 10, 100} by
3-fold cross-validated AP on trainval, then mAP on test. Low-shot: k positives and 19k negatives per
class, several seeded draws; as in FAIR's low-shot script every cost is scored on test and the best kept.
AP is scikit-learn's average precision (not VOC's 11-point interpolation).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

logger = logging.getLogger(__name__)
COSTS = (1.0, 10.0, 100.0)
LOW_SHOT_K = (1, 2, 4, 8, 16, 32, 64, 96)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _svm(cost: float):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge", dual=True,
                     max_iter=5000, tol=1e-4)


def _ap(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return 100.0 * float(average_precision_score(y == 1, scores))


def _fit_score(x, y, tx, ty, cost) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny folds
        clf = _svm(cost).fit(x, y)
    return _ap(ty, clf.decision_function(tx))


def voc07_svm(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray,
              costs: tuple[float, ...] = COSTS, folds: int = 3, seed: int = 0) -> dict:
    """``labels``: ``(N, C)`` in {1, -1, 0}. Returns ``{"mAP", "ap": [...], "costs": [...]}``."""
    from sklearn.model_selection import StratifiedKFold

    train_x, test_x = _normalize(train_x), _normalize(test_x)
    aps, chosen = [], []
    for c in range(train_labels.shape[1]):
        keep, tkeep = train_labels[:, c] != 0, test_labels[:, c] != 0
        x, y = train_x[keep], train_labels[keep, c]
        n_splits = min(folds, int((y == 1).sum()), int((y == -1).sum()))
        if n_splits >= 2:
            cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
            cv_ap = {cost: np.mean([_fit_score(x[a], y[a], x[b], y[b], cost) for a, b in cv.split(x, y)])
                     for cost in costs}
            best = max(costs, key=lambda cost: cv_ap[cost])
        else:
            best = costs[0]
        chosen.append(best)
        aps.append(_fit_score(x, y, test_x[tkeep], test_labels[tkeep, c], best))
    return {"mAP": float(np.mean(aps)), "ap": aps, "costs": chosen}


def low_shot_svm(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray,
                 ks: tuple[int, ...] = LOW_SHOT_K, draws: int = 5, costs: tuple[float, ...] = COSTS) -> dict:
    """``{k: {"mean", "min", "max", "std", "runs"}}``, and ``skipped``: the ks the data cannot supply."""
    train_x, test_x = _normalize(train_x), _normalize(test_x)
    results, skipped = {}, []
    for k in ks:
        pos_counts = (train_labels == 1).sum(0)
        neg_counts = (train_labels == -1).sum(0)
        if pos_counts.min() < k or neg_counts.min() < 19 * k:
            skipped.append(k)
            continue
        runs = []
        for draw in range(draws):
            rng = np.random.default_rng([draw, k])
            aps = []
            for c in range(train_labels.shape[1]):
                pos = rng.choice(np.flatnonzero(train_labels[:, c] == 1), k, replace=False)
                neg = rng.choice(np.flatnonzero(train_labels[:, c] == -1), 19 * k, replace=False)
                idx = np.concatenate([pos, neg])
                tkeep = test_labels[:, c] != 0
                aps.append(max(_fit_score(train_x[idx], train_labels[idx, c], test_x[tkeep],
                                          test_labels[tkeep, c], cost) for cost in costs))
            runs.append(float(np.mean(aps)))
        results[k] = {"mean": float(np.mean(runs)), "min": float(np.min(runs)), "max": float(np.max(runs)),
                      "std": float(np.std(runs)), "runs": runs}
    if skipped:
        logger.warning("low-shot k=%s skipped: the data has too few positives (k) or negatives (19k) per class",
                       skipped)
    return {"per_k": results, "skipped": skipped}
