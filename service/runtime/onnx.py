"""ONNX Runtime backend. Imports no torch when the model folder carries ``model.onnx``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hub.config import ONNX_INT8_NAME, ONNX_NAME
from hub.hub_io import ResolvedModel
from service.runtime.backend import Backend
from storage.files import cache_root

logger = logging.getLogger(__name__)


class OnnxRuntimeError(RuntimeError):
    """The model cannot be served through ONNX Runtime as configured."""


def _onnx_cache_dir() -> Path:
    return cache_root() / "onnx"


def onnx_path(resolved: ResolvedModel, precision: str) -> Path:
    """The graph to serve: the folder's ``model.onnx`` (or ``model.int8.onnx``), else one exported from
    the safetensors when torch is installed, cached by the weights' sha256."""
    name = ONNX_INT8_NAME if precision == "int8" else ONNX_NAME
    path = resolved.folder / name
    if path.exists():
        return path
    if precision == "int8":
        raise OnnxRuntimeError(f"{resolved.model_id} has no {ONNX_INT8_NAME}; make one with "
                               "`byol-hub export MODEL_DIR --format onnx --int8`, or serve --precision fp32")
    sha = resolved.config.weights_sha256
    cached = _onnx_cache_dir() / (sha or "unknown") / ONNX_NAME
    if sha and cached.exists():
        return cached
    try:
        import torch  # noqa: F401
    except ImportError:
        raise OnnxRuntimeError(
            f"{resolved.model_id} has no {ONNX_NAME} and torch is not installed to export one. Export it where "
            "torch is available (`byol-hub export MODEL_DIR --format onnx`), or use the `full` image / "
            "`--backend torch`") from None
    from hub.export.onnx import export_onnx
    from hub.model import BYOLModel

    logger.info("no %s in %s: exporting one from the weights (cached in %s)", ONNX_NAME, resolved.folder, cached)
    model = BYOLModel.from_pretrained(resolved.folder)
    export_onnx(model, cached)
    return cached


class OnnxBackend(Backend):
    name = "onnx"

    def __init__(self, resolved: ResolvedModel, *, precision: str = "fp32", threads: int = 0,
                 device: str = "cpu") -> None:
        import onnxruntime as ort

        if precision == "fp16":
            raise OnnxRuntimeError("the ONNX backend serves fp32 or int8; fp16 is a torch-on-CUDA option")
        self.precision = precision
        path = onnx_path(resolved, precision)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.path = path

    @property
    def outputs(self) -> list[str]:
        return self._outputs

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, {self.input_name: pixel_values})
        return dict(zip(self._outputs, values, strict=True))
