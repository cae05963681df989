"""``byol-hub export``: a :class:`hub.BYOLModel` in the formats other tools load.

- ``onnx``: the serving contract (:mod:`hub.export.onnx`).
- ``triton``: a Triton Inference Server model repository around the same ONNX graph (:mod:`hub.export.triton`).
- ``torchvision`` / ``timm``: ``resnetXX`` state dicts (no ``fc``: load with ``strict=False`` into
  torchvision); the ``timm`` folder is what ``timm.create_model("local-dir:<folder>", pretrained=True)`` loads
  (``num_classes=0``, ``features_only=True`` or a new head with ``num_classes=N``). A model folder written by
  ``save_pretrained`` already loads in timm itself; this export is the bare timm folder.
- ``detectron2``: a ``.pkl`` with MoCo's renaming (``stem.conv1``, ``res2``..``res5``, ``conv1.norm``,
  ``shortcut``), numpy arrays, ``matching_heuristics``.
- ``mmdet`` (also for mmseg): ``{"state_dict": {"backbone.conv1.weight", ...}, "meta": ...}``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from hub.config import EXPORT_FORMATS as FORMATS
from hub.config import ONNX_NAME
from hub.errors import ExportError
from hub.export.onnx import export_onnx
from hub.export.triton import export_triton
from hub.interop import timm_keys
from hub.provenance import package_versions
from storage.files import atomic_write


def _portable_state(model: Any, fmt: str) -> dict[str, Tensor]:
    if model.config.stem != "imagenet":
        raise ExportError(f"the {fmt} format has no CIFAR stem (3x3 conv, no max-pool); this model cannot be "
                          "expressed there. Use --format onnx, or this project's own folder")
    if model.config.padding != "torch":
        raise ExportError(f"the {fmt} ResNet pads symmetrically and cannot express Haiku 'SAME' padding; "
                          "re-convert with `--padding torch` to accept the documented drift")
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _d2_name(key: str) -> str:
    # MoCo's convert-torchvision-to-d2 renaming
    if "layer" not in key:
        key = "stem." + key
    for t in (1, 2, 3, 4):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def export(model: Any, fmt: str, out: str | Path, **options: Any) -> Path:
    """Export ``model`` in ``fmt`` to ``out`` (a file, or a folder for ``timm`` and ``triton``); returns the path.

    ``options`` go to :func:`hub.export.triton.export_triton` (``name``, ``max_batch_size``, ``kind``, ``count``)."""
    out = Path(out)
    arch = model.config.architecture
    if fmt == "onnx":
        return export_onnx(model, out)
    if fmt == "triton":
        return export_triton(model, out, **options)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; accepted: {', '.join(FORMATS)}")
    state = _portable_state(model, fmt)
    meta = {"architecture": arch, "weights_sha256": model.config.weights_sha256, "exported_by": "byol-hub",
            "versions": package_versions()}
    if fmt == "torchvision":
        atomic_write(out, lambda tmp: torch.save(state, tmp))
    elif fmt == "timm":
        out.mkdir(parents=True, exist_ok=True)
        # the same keys a model folder carries (classifier and first_conv included, so num_classes=N works)
        timm_cfg = {"architecture": arch, **timm_keys(model.config)}
        atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp))
        (out / "config.json").write_text(json.dumps(timm_cfg, indent=2) + "\n")
    elif fmt == "detectron2":
        d2 = {"model": {_d2_name(k): v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")},
              "__author__": "byol-hub", "matching_heuristics": True}

        def dump(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                pickle.dump(d2, fh)

        atomic_write(out, dump)
    elif fmt == "mmdet":
        payload = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}, "meta": meta}
        atomic_write(out, lambda tmp: torch.save(payload, tmp))
    return out


def default_export_path(folder: str | Path, fmt: str, architecture: str) -> Path:
    folder = Path(folder)
    return {
        "onnx": folder / ONNX_NAME,
        "triton": folder / "exports" / "triton",
        "torchvision": folder / "exports" / f"{architecture}_torchvision.pth",
        "timm": folder / "exports" / "timm",
        "detectron2": folder / "exports" / f"{architecture}_detectron2.pkl",
        "mmdet": folder / "exports" / f"{architecture}_mmdet.pth",
    }[fmt]
