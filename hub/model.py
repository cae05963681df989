"""``BYOLModel``: a torchvision ResNet encoder that exposes the seed's layers.

The published model is only the encoder (online backbone). Projector, predictor, target network
and EMA belong to ``training/``. Parameter names are torchvision's (``conv1.weight``,
``layer3.0.downsample.1.running_mean``, ...) without ``fc``, so exported state dicts load into
``torchvision.models.resnet50()`` directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn

from hub.config import ModelConfig
from hub.hub_io import HubIOMixin
from hub.layers import FEATURE_LAYERS, check_layers, check_pooling, mhead_pool, serving_outputs
from hub.preprocess import preprocess

logger = logging.getLogger(__name__)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Haiku 'SAME' padding (before, after): the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with Haiku's asymmetric 'SAME' padding (for DeepMind checkpoints in exact mode)."""

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameMaxPool2d(nn.MaxPool2d):
    """MaxPool2d with 'SAME' padding (pads with -inf, as Haiku's max_pool does)."""

    def forward(self, x: Tensor) -> Tensor:
        k, s = int(self.kernel_size), int(self.stride)
        top, bottom = _same_pad(x.shape[-2], k, s)
        left, right = _same_pad(x.shape[-1], k, s)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, k, s, 0)


def _to_same(conv: nn.Conv2d) -> SameConv2d:
    same = SameConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                      conv.dilation, conv.groups, conv.bias is not None)
    same.load_state_dict(conv.state_dict())
    return same


class BYOLModel(HubIOMixin, nn.Module):
    """A BYOL-pretrained ResNet feature extractor with the seed's layers.

    Layers: ``feature1`` (stem after conv1/bn1/relu, before the max-pool), ``feature2``..``feature5``
    (``layer1``..``layer4``) and ``avgpool`` (global average of ``feature5``).

    Example:
        >>> model = BYOLModel(ModelConfig(architecture="resnet18"))
        >>> x = torch.zeros(2, 3, 224, 224)
        >>> {k: tuple(v.shape) for k, v in model.features(x, layers=("feature5", "avgpool")).items()}
        {'feature5': (2, 512), 'avgpool': (2, 512)}
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ModelConfig or keyword fields, not both")
        self.config = config
        net = getattr(torchvision.models, config.architecture)(weights=None)
        if config.stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if config.padding == "tf_same":
            self._use_same_padding()
        self.eval()

    def _use_same_padding(self) -> None:
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d) and child.stride[0] > 1 and child.kernel_size[0] > 1:
                    setattr(parent, name, _to_same(child))
                elif isinstance(child, nn.MaxPool2d):
                    setattr(parent, name, SameMaxPool2d(child.kernel_size, child.stride))

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def feature_maps(self, pixel_values: Tensor, layers: Sequence[str] = FEATURE_LAYERS) -> dict[str, Tensor]:
        """Raw maps ``(B, C, H, W)`` of the requested ``feature*`` layers, computing no deeper than needed."""
        wanted = {FEATURE_LAYERS.index(name) for name in layers if name in FEATURE_LAYERS}
        deepest = max(wanted, default=-1)
        out: dict[str, Tensor] = {}
        x = self.relu(self.bn1(self.conv1(pixel_values)))
        if 0 in wanted:
            out["feature1"] = x
        x = self.maxpool(x)
        for i, stage in enumerate(self.stages, start=1):
            if i > deepest:
                break
            x = stage(x)
            if i in wanted:
                out[FEATURE_LAYERS[i]] = x
        return out

    @staticmethod
    def pool(name: str, fmap: Tensor, pooling: str) -> Tensor:
        """Pool one feature map: ``gap`` -> ``(B, C)``, ``mhead`` -> ``(B, C*G*G)``, ``none`` -> as is."""
        if pooling == "gap":
            return fmap.mean(dim=(2, 3))
        if pooling == "mhead":
            kernel, stride, padding = mhead_pool(name, int(fmap.shape[-1]))
            return F.avg_pool2d(fmap, kernel, stride, padding).flatten(1)
        return fmap

    def features(self, pixel_values: Tensor, layers: Sequence[str] | str = ("avgpool",),
                 pooling: str = "gap") -> dict[str, Tensor]:
        """Embeddings of ``layers`` for preprocessed ``pixel_values`` ``(B, 3, H, W)``.

        ``pooling`` is ``gap`` (``(B, C)``), ``mhead`` (the seed's multi-head grids, ``(B, C*G*G)``)
        or ``none`` (raw ``(B, C, H, W)`` maps). ``avgpool`` is always the global average of
        ``feature5``, ``(B, C5)``, whatever ``pooling`` says.
        """
        layers = check_layers(layers)
        pooling = check_pooling(pooling)
        need = [name for name in layers if name != "avgpool"]
        if "avgpool" in layers and "feature5" not in need:
            need.append("feature5")
        maps = self.feature_maps(pixel_values, need)
        out: dict[str, Tensor] = {}
        for name in layers:
            if name == "avgpool":
                out[name] = maps["feature5"].mean(dim=(2, 3))
            else:
                out[name] = self.pool(name, maps[name], pooling)
        return out

    def serving_outputs(self, pixel_values: Tensor, maps: Sequence[str] = ()) -> dict[str, Tensor]:
        """Every served output, named and ordered as :func:`hub.layers.serving_outputs` says (the ONNX
        graph's outputs): gap of each stage, ``avgpool``, then the ``.mhead`` poolings that apply, then the whole
        maps of the layers in ``maps`` (``featureK.map``, for region vectors)."""
        names = serving_outputs(self.config.stem, self.config.input_size, tuple(maps))
        fmaps = self.feature_maps(pixel_values, FEATURE_LAYERS)
        out = {name: fmaps[name].mean(dim=(2, 3)) for name in FEATURE_LAYERS}
        out["avgpool"] = out["feature5"]
        for name in names[len(out):]:
            if name.endswith(".map"):
                out[name] = fmaps[name.removesuffix(".map")]
            else:
                layer = name.removesuffix(".mhead")
                out[name] = self.pool(layer, fmaps[layer], "mhead")
        return out

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> the ``avgpool`` embedding ``(B, C5)``."""
        return self.features(pixel_values, ("avgpool",))["avgpool"]

    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> Tensor:
        """PIL images -> ``pixel_values`` ``(N, 3, crop, crop)`` with this model's preprocessing."""
        if isinstance(images, Image.Image):
            images = [images]
        return torch.from_numpy(preprocess(images, self.config.preprocessing))

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image] | Image.Image, layers: Sequence[str] | str = ("avgpool",),
              pooling: str = "gap") -> dict[str, np.ndarray]:
        """Convenience: PIL images -> numpy embeddings per layer (eval mode, no gradients)."""
        was_training = self.training
        self.eval()
        param = next(self.parameters())
        x = self.preprocess(images).to(param.device, param.dtype)
        try:
            return {k: v.float().cpu().numpy() for k, v in self.features(x, layers, pooling).items()}
        finally:
            self.train(was_training)
