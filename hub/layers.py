"""Layer names, ResNet shapes and the seed's pooling rules, without torch.

The seed (OpenMixup / MMSelfSup model zoo) names five ResNet stages ``feature1``..``feature5``
(stem output before the max-pool, then ``layer1``..``layer4``) plus ``avgpool``, the global average
of ``feature5``. Everything here is plain arithmetic so that the ONNX serving path can describe a
model without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.errors import ConfigError, LayerError

FEATURE_LAYERS: tuple[str, ...] = ("feature1", "feature2", "feature3", "feature4", "feature5")
LAYERS: tuple[str, ...] = (*FEATURE_LAYERS, "avgpool")
POOLINGS: tuple[str, ...] = ("gap", "mhead", "none")
STEMS: tuple[str, ...] = ("imagenet", "cifar")


@dataclass(frozen=True)
class ArchSpec:
    """Shape facts of one torchvision ResNet."""

    block: str  # "basic" or "bottleneck"
    depths: tuple[int, int, int, int]

    @property
    def channels(self) -> tuple[int, int, int, int, int]:
        """Output channels of feature1..feature5."""
        mult = 4 if self.block == "bottleneck" else 1
        return (64, 64 * mult, 128 * mult, 256 * mult, 512 * mult)

    @property
    def num_features(self) -> int:
        return self.channels[-1]


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec("basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ArchSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ArchSpec("bottleneck", (3, 8, 36, 3)),
}

# The seed's multi-head benchmark pooling (r50_mhead_sz224_*): AvgPool2d (kernel, stride, padding)
# per stage for ResNet-50 at 224x224, and the output grids they produce.
SEED_MHEAD_INPUT = 224
SEED_MHEAD_POOL: dict[str, tuple[int, int, int]] = {
    "feature1": (10, 10, 4),
    "feature2": (16, 8, 0),
    "feature3": (13, 5, 0),
    "feature4": (8, 3, 0),
    "feature5": (6, 1, 0),
}
MHEAD_GRID: dict[str, int] = {"feature1": 12, "feature2": 6, "feature3": 4, "feature4": 3, "feature5": 2}


def arch_spec(architecture: str) -> ArchSpec:
    try:
        return ARCHS[architecture]
    except KeyError:
        raise ConfigError(f"unknown architecture {architecture!r}; accepted: {', '.join(ARCHS)}") from None


def check_layers(layers: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate layer names, keeping their order and dropping duplicates."""
    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    if not layers:
        raise LayerError(f"no layer requested; accepted: {', '.join(LAYERS)}")
    unknown = [name for name in layers if name not in LAYERS]
    if unknown:
        raise LayerError(f"unknown layer(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(LAYERS)}")
    return tuple(dict.fromkeys(layers))


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise LayerError(f"unknown pooling {pooling!r}; accepted: {', '.join(POOLINGS)}")
    return pooling


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def feature_sizes(stem: str, input_size: int) -> tuple[int, int, int, int, int]:
    """Spatial side of feature1..feature5 for a square input (torchvision's padding arithmetic)."""
    if stem == "imagenet":
        f1 = _conv_out(input_size, 7, 2, 3)
        x = _conv_out(f1, 3, 2, 1)  # max-pool
    elif stem == "cifar":
        f1 = x = input_size  # 3x3 stride-1 conv, no max-pool
    else:
        raise ConfigError(f"unknown stem {stem!r}; accepted: {', '.join(STEMS)}")
    f2 = x
    f3 = _conv_out(f2, 3, 2, 1)
    f4 = _conv_out(f3, 3, 2, 1)
    f5 = _conv_out(f4, 3, 2, 1)
    return (f1, f2, f3, f4, f5)


def mhead_pool(layer: str, map_size: int) -> tuple[int, int, int]:
    """AvgPool2d (kernel, stride, padding) that turns a ``map_size`` square map into the seed's grid.

    Rule: where the map has the seed's size (ResNet at 224x224: 112/56/28/14/7) the seed's exact
    kernels are used. Otherwise, for a grid ``G`` and map side ``H >= G``, stride ``s = H // G`` and
    kernel ``k = H - s * (G - 1)`` with no padding: ``G x G`` windows that tile the whole map.
    A map smaller than its grid raises :class:`LayerError`.
    """
    grid = MHEAD_GRID[layer]
    seed_size = feature_sizes("imagenet", SEED_MHEAD_INPUT)[FEATURE_LAYERS.index(layer)]
    if map_size == seed_size:
        return SEED_MHEAD_POOL[layer]
    if map_size < grid:
        raise LayerError(
            f"'mhead' pooling needs {layer} to be at least {grid}x{grid}, but this model gives "
            f"{map_size}x{map_size}; use a larger input or pooling 'gap'/'none'"
        )
    stride = map_size // grid
    return (map_size - stride * (grid - 1), stride, 0)


def output_name(layer: str, pooling: str) -> str:
    """Name of a served output: ``featureK`` / ``avgpool`` (gap) or ``featureK.mhead``."""
    return layer if pooling == "gap" or layer == "avgpool" else f"{layer}.mhead"


def map_name(layer: str) -> str:
    """Name of a layer's whole map ``(B, C, H, W)`` as an extra output (region vectors are pooled from it)."""
    return f"{layer}.map"


def serving_outputs(stem: str, input_size: int, maps: tuple[str, ...] = ()) -> list[str]:
    """Outputs of the serving graph (ONNX and the torch backend), in order: ``feature1``..``feature5`` and
    ``avgpool`` (gap), then ``featureK.mhead`` for every layer where the mhead rule applies, then the whole maps
    of ``maps`` (``featureK.map``: only a graph made for region vectors carries them)."""
    mhead = []
    for layer, side in zip(FEATURE_LAYERS, feature_sizes(stem, input_size)):
        try:
            mhead_pool(layer, side)
            mhead.append(output_name(layer, "mhead"))
        except LayerError:
            pass
    return [*FEATURE_LAYERS, "avgpool", *mhead, *(map_name(layer) for layer in maps)]


def layer_dims(architecture: str, stem: str, input_size: int) -> dict[str, dict[str, int | None]]:
    """Embedding size of every layer under every pooling: ``{layer: {"gap": C, "mhead": C*G*G, ...}}``.

    ``mhead`` is ``None`` where the rule cannot apply; ``none`` is ``C*H*W`` (the flattened map).
    """
    spec = arch_spec(architecture)
    sizes = feature_sizes(stem, input_size)
    dims: dict[str, dict[str, int | None]] = {}
    for layer, channels, side in zip(FEATURE_LAYERS, spec.channels, sizes):
        try:
            k, s, p = mhead_pool(layer, side)
            grid = _conv_out(side, k, s, p)
            mhead: int | None = channels * grid * grid
        except LayerError:
            mhead = None
        dims[layer] = {"gap": channels, "mhead": mhead, "none": channels * side * side}
    c5 = spec.num_features
    dims["avgpool"] = {"gap": c5, "mhead": c5, "none": c5}
    return dims
