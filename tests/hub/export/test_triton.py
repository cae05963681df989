"""`byol-hub export --format triton`: the repository's config is Triton's own protobuf, and the client
code in docs/deployment.md gives /embed's vectors through the repository's ONNX graph."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402

from hub.cli import main as hub_main  # noqa: E402
from tests.support import REPO

DEPLOYMENT = REPO / "docs" / "deployment.md"


@pytest.fixture(scope="module")
def triton_repo(trained_model, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "repo"
    assert hub_main(["export", str(trained_model), "--format", "triton", "--out", str(repo),
                     "--triton-name", "byol-test", "--max-batch-size", "16", "--instances", "2"]) == 0
    return repo


def _model_config(folder: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_config_is_tritons_model_config_and_matches_the_graph(triton_repo):
    import onnxruntime as ort

    folder = triton_repo / "byol-test"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "byol_config.json", "config.pbtxt"]
    assert not [p for p in triton_repo.iterdir() if p.name.startswith(".")]  # no temporary folder left
    cfg = _model_config(folder)
    assert cfg.name == "byol-test" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    (group,) = cfg.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2

    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    graph_in = {i.name: i.shape[1:] for i in session.get_inputs()}
    graph_out = {o.name: o.shape[1:] for o in session.get_outputs()}
    assert {t.name: list(t.dims) for t in cfg.input} == graph_in == {"pixel_values": [3, 64, 64]}
    assert {t.name: list(t.dims) for t in cfg.output} == graph_out
    assert {"feature1", "feature5", "avgpool"} <= set(graph_out)
    assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in [*cfg.input, *cfg.output])


def test_gpu_instances_and_bad_options(trained_model, tmp_path, capsys):
    assert hub_main(["export", str(trained_model), "--format", "triton", "--out", str(tmp_path),
                     "--instance-kind", "gpu"]) == 0
    (folder,) = [p for p in tmp_path.iterdir()]
    assert folder.name == "org--byol-test"  # the model's name, made a valid Triton name
    (group,) = _model_config(folder).instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    before = (folder / "config.pbtxt").read_text()
    assert hub_main(["export", str(trained_model), "--format", "triton", "--out", str(tmp_path),
                     "--triton-name", "../escape"]) != 0
    assert "Triton model name" in capsys.readouterr().err
    assert hub_main(["export", str(trained_model), "--format", "triton", "--out", str(tmp_path),
                     "--triton-name", "org--byol-test", "--max-batch-size", "0"]) != 0
    assert (folder / "config.pbtxt").read_text() == before  # the older repository entry is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["org--byol-test"]


class OnnxTritonServer:
    """Stands in for ``tritonclient.grpc.InferenceServerClient`` (no Triton server can run here): the request is
    built by tritonclient's own builder, checked against the repository's ModelConfig as Triton checks it, run on
    the repository's ONNX graph, and answered as a real ``ModelInferResponse``."""

    repo: Path

    def __init__(self, url: str, *args, **kwargs) -> None:
        self.url = url

    def infer(self, model_name, inputs, model_version="", outputs=None, request_id="", sequence_id=0,
              sequence_start=False, sequence_end=False, priority=0, timeout=None, client_timeout=None,
              headers=None, compression_algorithm=None, parameters=None):
        import onnxruntime as ort
        from tritonclient.grpc import InferResult
        from tritonclient.grpc._utils import _get_inference_request

        request = _get_inference_request(model_name, inputs, model_version, request_id, outputs, sequence_id,
                                         sequence_start, sequence_end, priority, timeout, parameters)
        folder = self.repo / request.model_name
        cfg = _model_config(folder)
        declared = {t.name: list(t.dims) for t in cfg.input}
        feeds = {}
        for tensor, raw in zip(request.inputs, request.raw_input_contents):
            shape = list(tensor.shape)
            assert tensor.datatype == "FP32" and shape[1:] == declared[tensor.name], (tensor, declared)
            assert 1 <= shape[0] <= cfg.max_batch_size
            feeds[tensor.name] = np.frombuffer(raw, np.float32).reshape(shape)
        names = [o.name for o in request.outputs] or [o.name for o in cfg.output]
        session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        arrays = session.run(names, feeds)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1")
        for name, array in zip(names, arrays):
            out = response.outputs.add()
            out.name, out.datatype = name, "FP32"
            out.shape.extend(array.shape)
            response.raw_output_contents.append(np.ascontiguousarray(array, np.float32).tobytes())
        return InferResult(response)


def test_readme_client_code_returns_the_vectors_of_embed(triton_repo, onnx_client, photo_bytes, tmp_path,
                                                         monkeypatch):
    import tritonclient.grpc as grpcclient

    block = re.search(r"<!-- triton-client -->\s*```python\n(.*?)```\s*<!-- /triton-client -->",
                      DEPLOYMENT.read_text(), re.S)
    assert block, "docs/deployment.md's Triton client block is missing"
    code = block.group(1)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes[1])
    for old, new in (('"triton-repo"', repr(str(triton_repo))), ('"byol-r50-ep200"', '"byol-test"'),
                     ('"photo.jpg"', repr(str(photo)))):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    monkeypatch.setattr(OnnxTritonServer, "repo", triton_repo, raising=False)
    monkeypatch.setattr(grpcclient, "InferenceServerClient", OnnxTritonServer)
    namespace: dict = {}
    exec(compile(code, "docs/deployment.md:triton-client", "exec"), namespace)

    body = onnx_client.post("/embed?layers=feature5,avgpool",
                            files=[("images", ("photo.jpg", photo_bytes[1], "image/jpeg"))]).json()
    for layer in ("feature5", "avgpool"):
        served = np.array([body["data"][0]["embeddings"][layer]], np.float32)
        got = namespace["result"].as_numpy(layer)
        assert got.shape == served.shape and np.abs(got - served).max() <= 1e-5, layer
    assert namespace["avgpool"].shape == (1, body["dims"]["avgpool"])
