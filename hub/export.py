"""Exports of a :class:`hub.BYOLModel` to the formats other tools load.

- ``onnx``: the serving contract. ``model.onnx`` in the model folder; input ``pixel_values``
  (float32 NCHW, preprocessed, dynamic batch); outputs ``feature1``..``feature5`` and ``avgpool``
  (global average) plus ``feature1.mhead``..``feature5.mhead`` where the mhead rule applies. Exported
  with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and gives a
  plain, well-optimized graph for a ResNet. Opset, outputs and the weights' sha256 go into
  ``config.json``.
- ``triton``: a Triton Inference Server model repository around the same ONNX graph (:mod:`hub.triton`).
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
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hub.config import EXPORT_FORMATS as FORMATS
from hub.config import ONNX_NAME
from hub.errors import ExportError
from hub.files import atomic_write, sha256_file
from hub.layers import serving_outputs
from hub.provenance import package_versions

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "pixel_values"


class _OnnxGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.serving_outputs(pixel_values).values())


def export_onnx(model: Any, path: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Write the serving graph to ``path`` and record it in ``model.config.onnx``."""
    outputs = serving_outputs(model.config.stem, model.config.input_size)
    size = model.config.input_size
    graph = _OnnxGraph(model).eval()
    dummy = torch.zeros(1, 3, size, size)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # mhead kernels are fixed per input size
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            torch.onnx.export(graph, (dummy,), tmp, input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)

    was_training = model.training
    model.eval()
    try:
        atomic_write(path, write)
    finally:
        model.train(was_training)
    model.config.onnx = {
        "file": Path(path).name, "opset": opset, "exporter": "torch.onnx (TorchScript, dynamo=False)",
        "input": INPUT_NAME, "input_shape": ["batch", 3, size, size], "outputs": outputs,
        "weights_sha256": model.config.weights_sha256, "sha256": sha256_file(path),
        "torch": torch.__version__,
    }
    return Path(path)


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

    ``options`` go to :func:`hub.triton.export_triton` (``name``, ``max_batch_size``, ``kind``, ``count``)."""
    out = Path(out)
    arch = model.config.architecture
    if fmt == "onnx":
        return export_onnx(model, out)
    if fmt == "triton":
        from hub.triton import export_triton

        return export_triton(model, out, **options)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; accepted: {', '.join(FORMATS)}")
    state = _portable_state(model, fmt)
    meta = {"architecture": arch, "weights_sha256": model.config.weights_sha256, "exported_by": "byol-hub",
            "versions": package_versions()}
    if fmt == "torchvision":
        atomic_write(out, lambda tmp: torch.save(state, tmp))
    elif fmt == "timm":
        from safetensors.torch import save_file

        from hub.interop import timm_keys

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
