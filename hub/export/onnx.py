"""The ONNX export: the serving contract (``model.onnx``).

``model.onnx`` in the model folder; input ``pixel_values`` (float32 NCHW, preprocessed, dynamic batch); outputs
``feature1``..``feature5`` and ``avgpool`` (global average) plus ``feature1.mhead``..``feature5.mhead`` where the
mhead rule applies. Exported with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no
``onnxscript`` and gives a plain, well-optimized graph for a ResNet. Opset, outputs and the weights' sha256 go
into ``config.json``.
"""


from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hub.layers import serving_outputs
from storage.files import atomic_write, sha256_file

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "pixel_values"


class _OnnxGraph(nn.Module):
    def __init__(self, model: nn.Module, maps: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model, self.maps = model, maps

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.serving_outputs(pixel_values, self.maps).values())


def export_onnx(model: Any, path: str | Path, *, opset: int = ONNX_OPSET, maps: tuple[str, ...] = ()) -> Path:
    """Write the serving graph to ``path`` and record it in ``model.config.onnx``; ``maps``: layers whose whole
    map the graph also gives (``featureK.map``, the graph a run with region vectors uses)."""
    outputs = serving_outputs(model.config.stem, model.config.input_size, tuple(maps))
    size = model.config.input_size
    graph = _OnnxGraph(model, tuple(maps)).eval()
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
