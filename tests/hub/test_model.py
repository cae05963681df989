import pytest
import torch

from hub import BYOLModel, ModelConfig
from hub.errors import ConfigError, LayerError
from hub.layers import FEATURE_LAYERS, LAYERS


def test_resnet50_layers_have_the_seed_shapes_and_config_dims():
    model = BYOLModel(ModelConfig())  # resnet50 by default
    assert not model.training
    assert not any(k.startswith("fc.") for k in model.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        raw = model.features(x, layers=FEATURE_LAYERS, pooling="none")
        mhead = model.features(x, layers=LAYERS, pooling="mhead")
    assert [tuple(raw[n].shape[1:]) for n in FEATURE_LAYERS] == [
        (64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    dims = model.config.dims("mhead")
    assert {n: t.shape[1] for n, t in mhead.items()} == dims
    assert dims["feature1"] == 9216 and dims["avgpool"] == 2048


def test_feature1_is_before_the_maxpool(make_model, pixel_batch):
    model = make_model()
    with torch.no_grad():
        f1 = model.features(pixel_batch, ("feature1",), "none")["feature1"]
        stem = model.relu(model.bn1(model.conv1(pixel_batch)))
    assert torch.equal(f1, stem)


def test_avgpool_ignores_pooling_and_matches_torchvision(make_model, pixel_batch):
    import torchvision

    model = make_model()
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(model.state_dict())
    tv.eval()
    with torch.no_grad():
        ref = tv(pixel_batch)
        for pooling in ("gap", "mhead", "none"):
            out = model.features(pixel_batch, ("avgpool",), pooling)["avgpool"]
            assert out.shape == (4, 512)
            assert torch.allclose(out, ref, atol=1e-5)
        assert torch.allclose(model(pixel_batch), ref, atol=1e-5)


def test_cifar_stem(make_model):
    model = make_model(stem="cifar", preprocessing={"resize_size": 32, "crop_size": 32})
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        out = model.features(torch.randn(2, 3, 32, 32), LAYERS, "mhead")
    assert {k: v.shape[1] for k, v in out.items()} == model.config.dims("mhead")


def test_mhead_too_small_is_a_clear_error(make_model):
    model = make_model(preprocessing={"resize_size": 32, "crop_size": 32})
    with pytest.raises(LayerError, match="mhead"):
        model.features(torch.randn(1, 3, 32, 32), ("feature5",), "mhead")


def test_bad_names_are_refused(make_model):
    model = make_model()
    with pytest.raises(LayerError, match="accepted"):
        model.features(torch.randn(1, 3, 64, 64), ("layer4",))
    with pytest.raises(LayerError, match="accepted: gap, mhead, none"):
        model.features(torch.randn(1, 3, 64, 64), ("avgpool",), "max")
    with pytest.raises(ConfigError, match="resnet50"):
        ModelConfig(architecture="vit_b_16")


def test_embed_and_preprocess_accept_pil_images(make_model, photos):
    model = make_model()
    out = model.embed(photos[:2], layers=("feature3", "avgpool"))
    assert out["feature3"].shape == (2, 128) and out["avgpool"].shape == (2, 512)
    assert model.preprocess(photos[0]).shape == (1, 3, 224, 224)
