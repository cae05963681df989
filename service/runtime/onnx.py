"""ONNX Runtime backend. Imports no torch when the model folder carries ``model.onnx``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hub.config import ONNX_INT8_NAME, ONNX_NAME, WEIGHTS_NAME
from hub.hub_io import ResolvedModel
from hub.layers import map_name
from service.runtime.backend import Backend
from storage.files import cache_root

logger = logging.getLogger(__name__)


class OnnxRuntimeError(RuntimeError):
    """The model cannot be served through ONNX Runtime as configured."""


def _onnx_cache_dir() -> Path:
    return cache_root() / "onnx"


def onnx_path(resolved: ResolvedModel, precision: str, maps: tuple[str, ...] = ()) -> Path:
    """The graph to serve: the folder's ``model.onnx`` (or ``model.int8.onnx``), else one exported from
    the safetensors when torch is installed, cached by the weights' sha256. ``maps``: layers whose whole maps the
    graph must also give (region vectors): the folder's graph where it has them, else a cached export."""
    name = ONNX_INT8_NAME if precision == "int8" else ONNX_NAME
    path = resolved.folder / name
    wanted = [map_name(layer) for layer in maps]
    if maps:
        if precision == "int8":
            raise OnnxRuntimeError("region vectors are made by the fp32 graph; run with --precision fp32")
        has = set((resolved.config.onnx or {}).get("outputs") or ())
        if path.exists() and has.issuperset(wanted):
            return path
        name = "model." + "-".join(sorted(maps)) + ".maps.onnx"
    elif path.exists():
        return path
    if precision == "int8":
        raise OnnxRuntimeError(f"{resolved.model_id} has no {ONNX_INT8_NAME}; make one with "
                               "`byol-hub export MODEL_DIR --format onnx --int8`, or serve --precision fp32")
    sha = resolved.config.weights_sha256
    # by the weights and the input size (a folder whose preprocessing was changed needs another graph)
    cached = _onnx_cache_dir() / (sha or "unknown") / str(resolved.config.input_size) / name
    if sha and cached.exists():
        return cached
    try:
        import torch  # noqa: F401
    except ImportError:
        if maps:
            raise OnnxRuntimeError(
                f"{resolved.model_id}'s {ONNX_NAME} does not give the maps of {', '.join(maps)} (region vectors) and "
                "torch is not installed to export a graph that does; install torch (pip install 'byol[torch]') or "
                "use --backend torch") from None
        raise OnnxRuntimeError(
            f"{resolved.model_id} has no {ONNX_NAME} and torch is not installed to export one. Export it where "
            "torch is available (`byol-hub export MODEL_DIR --format onnx`), or use the `full` image / "
            "`--backend torch`") from None
    from hub.export.onnx import export_onnx
    from hub.model import BYOLModel

    if not (resolved.folder / WEIGHTS_NAME).exists():
        raise OnnxRuntimeError(f"{resolved.folder} has no weights to export a graph with the maps of "
                               f"{', '.join(maps)} from")
    logger.info("no %s in %s: exporting one from the weights (cached in %s)", name, resolved.folder, cached)
    model = BYOLModel.from_pretrained(resolved.folder)
    export_onnx(model, cached, maps=tuple(maps))
    return cached


class OnnxBackend(Backend):
    name = "onnx"

    def __init__(self, resolved: ResolvedModel, *, precision: str = "fp32", threads: int = 0,
                 device: str = "cpu", maps: tuple[str, ...] = ()) -> None:
        import onnxruntime as ort

        if precision == "fp16":
            raise OnnxRuntimeError("the ONNX backend serves fp32 or int8; fp16 is a torch-on-CUDA option")
        self.precision = precision
        path = onnx_path(resolved, precision, maps)
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
