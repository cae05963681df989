import pickle

import pytest
import torch

from hub import BYOLModel
from hub.convert.checkpoint import convert_checkpoint, detect_source, read_checkpoint
from hub.errors import CheckpointFormatError
from hub.layers import LAYERS
from hub.model import _same_pad
from storage.files import sha256_file
from tests.hub import layouts
from tests.support.models import max_abs_diff


@pytest.fixture()
def source_model(make_model):
    return make_model(seed=3)


def _backbone_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_features(converted, source, pixels):
    with torch.no_grad():
        a = converted.features(pixels, LAYERS, "gap")
        b = source.features(pixels, LAYERS, "gap")
    for layer in LAYERS:
        assert max_abs_diff(a[layer], b[layer]) <= 1e-5, layer


FC = {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}


@pytest.mark.parametrize("layout, expected", [
    ("mmselfsup_full", "mmselfsup"),
    ("mmselfsup_backbone", "mmselfsup"),
    ("plain_extracted", "torchvision"),
    ("solo_learn", "solo-learn"),
    ("lightly", "lightly"),
    ("byol_pytorch", "byol-pytorch"),
    ("torchvision", "torchvision"),
])
def test_converters_reproduce_the_features(tmp_path, source_model, pixel_batch, layout, expected):
    sd = _backbone_state(source_model)
    ckpt = {
        "mmselfsup_full": lambda: layouts.mmselfsup(sd),
        "mmselfsup_backbone": lambda: layouts.mmselfsup(sd, full=False),
        "plain_extracted": lambda: {"state_dict": sd},
        "solo_learn": lambda: layouts.solo_learn(sd),
        "lightly": lambda: layouts.lightly(sd),
        "byol_pytorch": lambda: layouts.byol_pytorch(sd, FC),
        "torchvision": lambda: {**sd, **FC},
    }[layout]()
    path = tmp_path / ("model.ckpt" if layout == "solo_learn" else "model.pth")
    torch.save(ckpt, path)
    assert detect_source(read_checkpoint(path)) == expected
    converted = convert_checkpoint(path)
    assert converted.config.provenance["source_format"] == expected
    assert converted.config.architecture == "resnet18"
    _assert_same_features(converted, source_model, pixel_batch)


def test_timm_state_dict(tmp_path, source_model, pixel_batch):
    import timm

    net = timm.create_model("resnet18", num_classes=1000)
    missing, unexpected = net.load_state_dict(_backbone_state(source_model), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    converted = convert_checkpoint(tmp_path / "timm.pth", source="timm")
    _assert_same_features(converted, source_model, pixel_batch)


def test_custom_wrapper_with_prefix(tmp_path, source_model, pixel_batch):
    torch.save({"model": {f"encoder.trunk.{k}": v for k, v in _backbone_state(source_model).items()}},
               tmp_path / "custom.pth")
    with pytest.raises(CheckpointFormatError, match=r"prefixes \['encoder.'\]"):
        convert_checkpoint(tmp_path / "custom.pth")
    converted = convert_checkpoint(tmp_path / "custom.pth", source="torchvision", prefix="encoder.trunk.")
    _assert_same_features(converted, source_model, pixel_batch)


@pytest.mark.parametrize("wrap", ["torchvision", "lightly"])
def test_prefix_with_auto_source_is_stripped_before_detection(tmp_path, source_model, pixel_batch, wrap):
    """The error message says to pass --prefix: doing so with --source auto must work (it failed before)."""
    state = _backbone_state(source_model)
    if wrap == "lightly":  # nn.Sequential(*resnet.children()[:-1]) inside the wrapper
        state = {k.removeprefix("backbone."): v for k, v in layouts.lightly(state).items()}
    torch.save({f"net.{k}": v for k, v in state.items()}, tmp_path / "net.pth")
    from hub.cli import main

    assert main(["convert", str(tmp_path / "net.pth"), str(tmp_path / "out"), "--prefix", "net.", "--no-onnx"]) == 0
    _assert_same_features(BYOLModel.from_pretrained(tmp_path / "out"), source_model, pixel_batch)
    with pytest.raises(CheckpointFormatError, match=r"no key starts with prefix 'encoder.'; prefixes found: \['net.'\]"):
        convert_checkpoint(tmp_path / "net.pth", prefix="encoder.")


def test_resnet50_mmselfsup_with_downsample_bn(tmp_path, make_model, pixel_batch):
    source = make_model("resnet50", seed=7)
    torch.save(layouts.mmselfsup(_backbone_state(source)), tmp_path / "r50.pth")
    converted = convert_checkpoint(tmp_path / "r50.pth", zoo="byol-r50-ep200")
    assert converted.config.architecture == "resnet50"
    assert converted.config.provenance["training_config"] == "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200"
    _assert_same_features(converted, source, pixel_batch[:2])


def test_cifar_stem_is_detected(tmp_path, make_model):
    source = make_model(stem="cifar", preprocessing={"resize_size": 32, "crop_size": 32})
    torch.save(layouts.solo_learn(_backbone_state(source)), tmp_path / "cifar.ckpt")
    converted = convert_checkpoint(tmp_path / "cifar.ckpt")
    assert converted.config.stem == "cifar"
    x = torch.randn(2, 3, 32, 32)
    _assert_same_features(converted, source, x)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_deepmind_pickle_takes_the_online_network(tmp_path, make_model, pixel_batch, arch):
    source = make_model(arch, seed=11)
    with open(tmp_path / "pretrain_res50x1.pkl", "wb") as fh:
        pickle.dump(layouts.deepmind(_backbone_state(source)), fh)
    assert detect_source(read_checkpoint(tmp_path / "pretrain_res50x1.pkl")) == "deepmind"
    portable = convert_checkpoint(tmp_path / "pretrain_res50x1.pkl", padding="torch")
    _assert_same_features(portable, source, pixel_batch[:2])  # online, not target (+1.0), weights
    exact = convert_checkpoint(tmp_path / "pretrain_res50x1.pkl")
    assert exact.config.padding == "tf_same"
    with torch.no_grad():  # the same weights; only the padding differs, so features drift a little
        drift = max_abs_diff(exact(pixel_batch[:2]), portable(pixel_batch[:2]))
    assert 0 < drift


def test_same_padding_arithmetic_matches_tensorflow():
    # TF: out = ceil(in / stride); pad_total = max((out - 1) * stride + k - in, 0); extra pixel after
    assert _same_pad(224, 7, 2) == (2, 3)
    assert _same_pad(112, 3, 2) == (0, 1)
    assert _same_pad(56, 1, 2) == (0, 0)
    assert _same_pad(7, 3, 2) == (1, 1)
    assert _same_pad(56, 3, 1) == (1, 1)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/byol-hub-pwned",))


def test_pickles_cannot_run_code(tmp_path):
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump({"params": _Evil()}, fh)
    with pytest.raises(CheckpointFormatError, match="refusing to unpickle"):
        convert_checkpoint(tmp_path / "evil.pkl")
    torch.save({"x": 1}, tmp_path / "ok.pth")
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(CheckpointFormatError):
        convert_checkpoint(tmp_path / "evil.pth")
    import os

    assert not os.path.exists("/tmp/byol-hub-pwned")


def test_unknown_layout_lists_what_was_found(tmp_path):
    torch.save({"state_dict": {"encoder.blocks.0.weight": torch.zeros(3)}}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointFormatError, match=r"unknown checkpoint layout: 1 tensors under prefixes \['encoder.'\]"):
        convert_checkpoint(tmp_path / "vit.pth")
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pth")


def test_release_identity_is_checked_against_the_hash(tmp_path, source_model):
    torch.save(layouts.mmselfsup(_backbone_state(source_model)), tmp_path / "tmp.pth")
    sha = sha256_file(tmp_path / "tmp.pth")
    good = tmp_path / f"byol_resnet18_8xb64-coslr-200e_in1k_20220825-{sha[:8]}.pth"
    bad = tmp_path / "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth"
    (tmp_path / "tmp.pth").rename(good)
    bad.write_bytes(good.read_bytes())
    verified = convert_checkpoint(good).config.provenance
    assert verified["verified_release"] == good.name and verified["identity"].startswith("Verified")
    unverified = convert_checkpoint(bad).config.provenance
    assert unverified["verified_release"] is None and "Unverified" in unverified["identity"]
    assert "de817331" in unverified["identity"]


def test_zoo_architecture_mismatch_is_refused(tmp_path, source_model):
    torch.save(_backbone_state(source_model), tmp_path / "r18.pth")
    with pytest.raises(CheckpointFormatError, match="resnet50 but the checkpoint holds a resnet18"):
        convert_checkpoint(tmp_path / "r18.pth", zoo="byol-r50-ep200")


def test_converted_folder_round_trips(tmp_path, source_model, pixel_batch):
    torch.save(layouts.mmselfsup(_backbone_state(source_model)), tmp_path / "m.pth")
    convert_checkpoint(tmp_path / "m.pth").save_pretrained(tmp_path / "out")
    loaded = BYOLModel.from_pretrained(tmp_path / "out")
    assert loaded.config.provenance["source_sha256"] == sha256_file(tmp_path / "m.pth")
    _assert_same_features(loaded, source_model, pixel_batch)
