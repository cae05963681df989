"""A Triton Inference Server model repository for a :class:`hub.BYOLModel` (``byol-hub export --format triton``).

    REPO/<name>/config.pbtxt        platform onnxruntime_onnx, max_batch_size, dynamic_batching, instance_group
    REPO/<name>/1/model.onnx        the serving graph (the same as the folder's model.onnx)
    REPO/<name>/byol_config.json    the model's config.json: its preprocessing, for clients (Triton ignores it)

The inputs and outputs in ``config.pbtxt`` are read back from the ONNX graph that the repository holds, so their
names and dims are the graph's by construction. Triton takes dims without the batch dimension when
``max_batch_size > 0``. Clients preprocess with :func:`hub.preprocess.preprocess` (PIL + numpy, no torch); see
the README for the client code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hub.config import INSTANCE_KINDS
from hub.errors import ExportError
from hub.export.onnx import export_onnx
from storage.files import replace_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64", 3: "TYPE_INT8",
               2: "TYPE_UINT8"}


def graph_io(onnx_path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs as ``{"name", "data_type", "dims"}``, the batch dimension left out."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            if not dims or dims[0] != -1:
                raise ExportError(f"{value.name}: the first dimension of the ONNX graph is not a dynamic batch "
                                  f"(shape {dims}); re-export the model")
            if any(d <= 0 for d in dims[1:]):
                raise ExportError(f"{value.name}: the ONNX graph leaves a dimension other than the batch open "
                                  f"(shape {dims}); Triton needs fixed dims")
            out.append({"name": value.name, "data_type": _ONNX_TYPES.get(tensor.elem_type, "TYPE_FP32"),
                        "dims": dims[1:]})
        return out

    initializers = {i.name for i in model.graph.initializer}
    return describe([i for i in model.graph.input if i.name not in initializers]), describe(model.graph.output)


def _tensors(tensors: list[dict[str, Any]]) -> str:
    rows = [f'  {{ name: "{t["name"]}" data_type: {t["data_type"]} dims: [ {", ".join(map(str, t["dims"]))} ] }}'
            for t in tensors]
    return "[\n" + ",\n".join(rows) + "\n]"


def model_config_text(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], *,
                      max_batch_size: int, kind: str, count: int, max_queue_delay_us: int) -> str:
    """``config.pbtxt`` in protobuf text format (Triton's ``inference.ModelConfig``)."""
    preferred = sorted({b for b in (4, 8, 16, 32) if b <= max_batch_size} | {max_batch_size})
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input {_tensors(inputs)}\n"
        f"output {_tensors(outputs)}\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}\n"
        f"instance_group [ {{ count: {count} kind: KIND_{kind.upper()} }} ]\n"
    )


def export_triton(model: Any, repo: str | Path, *, name: str | None = None, max_batch_size: int = 32,
                  kind: str = "cpu", count: int = 1, max_queue_delay_us: int = 5000) -> Path:
    """Write ``repo/<name>/`` (config.pbtxt, 1/model.onnx, byol_config.json); returns that folder.

    The model folder appears whole or not at all: it is built beside its final place and renamed in; an older
    one of the same name is replaced only once the new one is complete.
    """
    name = name or model.config.name or f"byol-{model.config.architecture}"
    name = name.replace("/", "--")
    if not _NAME.match(name):
        raise ExportError(f"Triton model name {name!r}: use letters, digits, '_', '.' and '-' (at most 128, "
                          "starting with a letter or digit)")
    if kind not in INSTANCE_KINDS:
        raise ExportError(f"instance kind {kind!r}; accepted: {', '.join(INSTANCE_KINDS)}")
    if max_batch_size < 1 or count < 1 or max_queue_delay_us < 0:
        raise ExportError("max_batch_size and the instance count must be >= 1, the queue delay >= 0")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / name
    build = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        (build / "1").mkdir()
        onnx_path = export_onnx(model, build / "1" / "model.onnx")
        inputs, outputs = graph_io(onnx_path)
        (build / "config.pbtxt").write_text(model_config_text(
            name, inputs, outputs, max_batch_size=max_batch_size, kind=kind, count=count,
            max_queue_delay_us=max_queue_delay_us), encoding="utf-8")
        (build / "byol_config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n",
                                                encoding="utf-8")
        os.chmod(build, 0o755)
        replace_dir(build, final)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return final
