"""Result files (one per protocol + dataset + mode) and their merge into the model card."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hub.card import write_card
from hub.provenance import package_versions
from hub.zoo import result
from storage.files import atomic_write_text


def measured(protocol: str, dataset: str, metric: str, value: float, *, layer: str | None, mode: str,
             std: float | None = None, **extra: Any) -> dict[str, Any]:
    return result(protocol, dataset, metric, value, layer=layer, source="measured", mode=mode, std=std, **extra)


def _key(entry: dict[str, Any]) -> tuple:
    return entry.get("layer"), entry.get("metric"), entry.get("k")


def save_results(folder: str | Path, protocol: str, dataset: str, mode: str, entries: list[dict[str, Any]], *,
                 model: Any, splits: dict[str, int], seeds: list[int], git_commit: str | None) -> Path:
    """Write ``folder/results/PROTOCOL-DATASET-MODE.json``; an earlier result of the same protocol, dataset,
    mode and layer is replaced, other layers of the file are kept."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", dataset)
    path = Path(folder) / "results" / f"{protocol}-{slug}-{mode}.json"
    previous = json.loads(path.read_text())["results"] if path.exists() else []
    new_keys = {_key(e) for e in entries}
    merged = [e for e in previous if _key(e) not in new_keys] + entries
    record = {"protocol": protocol, "dataset": dataset, "mode": mode, "splits": splits, "seeds": seeds,
              "model": getattr(model, "source", {}).get("id"), "weights_sha256": model.config.weights_sha256,
              "git_commit": git_commit, "versions": package_versions(), "results": merged}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def update_card(folder: str | Path) -> Path:
    """Rewrite ``folder/README.md``: the seed's reported numbers stay, measured ones sit beside them."""
    return write_card(folder)
