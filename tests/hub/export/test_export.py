import pickle

import numpy as np
import pytest
import torch

from hub import BYOLModel
from hub.errors import ExportError
from hub.export.formats import export
from hub.layers import FEATURE_LAYERS, LAYERS
from tests.support.models import max_abs_diff


def test_onnx_contract_and_parity_on_real_photos(tmp_path, make_model, pixel_batch):
    import onnxruntime as ort

    model = make_model()
    model.save_pretrained(tmp_path / "m", onnx=True)
    cfg = BYOLModel.from_pretrained(tmp_path / "m").config
    assert cfg.onnx["weights_sha256"] == cfg.weights_sha256 and cfg.onnx["opset"] == 17
    session = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "pixel_values" and inp.type == "tensor(float)" and not isinstance(inp.shape[0], int)
    names = [o.name for o in session.get_outputs()]
    assert names == [*LAYERS, *(f"{f}.mhead" for f in FEATURE_LAYERS)] == cfg.onnx["outputs"]
    outputs = dict(zip(names, session.run(None, {"pixel_values": pixel_batch.numpy()})))
    with torch.no_grad():
        gap = model.features(pixel_batch, LAYERS, "gap")
        mhead = model.features(pixel_batch, FEATURE_LAYERS, "mhead")
    for name in LAYERS:
        ref = gap[name].numpy()
        assert max_abs_diff(outputs[name], ref) <= 1e-4 * np.abs(ref).max(), name
    for name in FEATURE_LAYERS:
        ref = mhead[name].numpy()
        assert max_abs_diff(outputs[f"{name}.mhead"], ref) <= 1e-4 * np.abs(ref).max(), name
    # dynamic batch: one image alone gives the same embedding as inside the batch
    single = session.run(["avgpool"], {"pixel_values": pixel_batch[:1].numpy()})[0]
    assert max_abs_diff(single, outputs["avgpool"][:1]) <= 1e-4 * np.abs(single).max()


def test_resaving_new_weights_drops_a_stale_onnx(tmp_path, make_model):
    make_model(seed=0).save_pretrained(tmp_path / "m", onnx=True)
    make_model(seed=1).save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert BYOLModel.from_pretrained(tmp_path / "m").config.onnx == {}


def test_torchvision_and_timm_exports_load(tmp_path, make_model, pixel_batch):
    import timm
    import torchvision

    model = make_model()
    with torch.no_grad():
        ref = model(pixel_batch)
    export(model, "torchvision", tmp_path / "tv.pth")
    tv = torchvision.models.resnet18()
    missing, unexpected = tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        assert max_abs_diff(tv.eval()(pixel_batch), ref) <= 1e-5

    export(model, "timm", tmp_path / "timm")
    from safetensors.torch import load_file

    net = timm.create_model("resnet18", num_classes=0)
    net.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    with torch.no_grad():
        assert max_abs_diff(net.eval()(pixel_batch), ref) <= 1e-5


def test_detectron2_and_mmdet_exports(tmp_path, make_model):
    model = make_model("resnet50")
    state = model.state_dict()
    export(model, "detectron2", tmp_path / "d2.pkl")
    with open(tmp_path / "d2.pkl", "rb") as fh:
        d2 = pickle.load(fh)
    assert d2["matching_heuristics"] is True
    weights = d2["model"]
    np.testing.assert_array_equal(weights["stem.conv1.weight"], state["conv1.weight"].numpy())
    np.testing.assert_array_equal(weights["stem.conv1.norm.running_var"], state["bn1.running_var"].numpy())
    np.testing.assert_array_equal(weights["res4.0.shortcut.norm.weight"], state["layer3.0.downsample.1.weight"].numpy())
    np.testing.assert_array_equal(weights["res5.2.conv3.norm.bias"], state["layer4.2.bn3.bias"].numpy())
    assert len(weights) == len([k for k in state if not k.endswith("num_batches_tracked")])

    export(model, "mmdet", tmp_path / "mmdet.pth")
    mm = torch.load(tmp_path / "mmdet.pth", weights_only=True)
    assert set(mm["state_dict"]) == {f"backbone.{k}" for k in state}
    assert torch.equal(mm["state_dict"]["backbone.layer3.0.downsample.1.running_mean"],
                       state["layer3.0.downsample.1.running_mean"])


def test_exports_refuse_what_they_cannot_express(tmp_path, make_model):
    cifar = make_model(stem="cifar", preprocessing={"resize_size": 32, "crop_size": 32})
    for fmt in ("torchvision", "timm", "detectron2", "mmdet"):
        with pytest.raises(ExportError, match="CIFAR stem"):
            export(cifar, fmt, tmp_path / f"x.{fmt}")
    assert not list(tmp_path.iterdir())
    same = make_model(padding="tf_same")
    with pytest.raises(ExportError, match="--padding torch"):
        export(same, "torchvision", tmp_path / "x.pth")
    with pytest.raises(ExportError, match="accepted: onnx"):
        export(make_model(), "tflite", tmp_path / "x")
