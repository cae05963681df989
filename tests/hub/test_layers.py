import pytest

from hub.errors import LayerError
from hub.layers import check_layers, feature_sizes, layer_dims, mhead_pool


def test_resnet50_mhead_dims_match_the_seed():
    dims = layer_dims("resnet50", "imagenet", 224)
    assert [dims[f"feature{i}"]["mhead"] for i in range(1, 6)] == [9216, 9216, 8192, 9216, 8192]
    assert [dims[f"feature{i}"]["gap"] for i in range(1, 6)] == [64, 256, 512, 1024, 2048]
    assert dims["avgpool"] == {"gap": 2048, "mhead": 2048, "none": 2048}
    assert dims["feature1"]["none"] == 64 * 112 * 112


def test_seed_kernels_are_used_at_224():
    sizes = feature_sizes("imagenet", 224)
    assert sizes == (112, 56, 28, 14, 7)
    assert [mhead_pool(f"feature{i + 1}", s) for i, s in enumerate(sizes)] == [
        (10, 10, 4), (16, 8, 0), (13, 5, 0), (8, 3, 0), (6, 1, 0)]


@pytest.mark.parametrize("size", [64, 96, 160, 288, 320])
def test_mhead_rule_reaches_the_seed_grids_at_other_sizes(size):
    grids = (12, 6, 4, 3, 2)
    for i, side in enumerate(feature_sizes("imagenet", size)):
        if side < grids[i]:
            with pytest.raises(LayerError, match="at least"):
                mhead_pool(f"feature{i + 1}", side)
            continue
        k, s, p = mhead_pool(f"feature{i + 1}", side)
        assert (side + 2 * p - k) // s + 1 == grids[i]


def test_cifar_stem_keeps_resolution():
    assert feature_sizes("cifar", 32) == (32, 32, 16, 8, 4)
    assert layer_dims("resnet18", "cifar", 32)["feature5"]["mhead"] == 512 * 4


def test_layer_names_are_checked():
    assert check_layers("feature5, avgpool,feature5") == ("feature5", "avgpool")
    with pytest.raises(LayerError, match="accepted: feature1"):
        check_layers(["layer4"])
    with pytest.raises(LayerError):
        check_layers([])
