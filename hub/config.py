"""The model's ``config.json``: a typed, versioned description that needs no torch to read.

A published folder holds ``config.json`` next to ``model.safetensors`` (and optionally ``model.onnx``).
The config says which network the weights belong to, which layers it exposes and how large each
embedding is, how images must be preprocessed, and where the weights came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hub.errors import ConfigError
from hub.layers import ARCHS, STEMS, layer_dims

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"
CARD_NAME = "README.md"
PADDINGS = ("torch", "tf_same")
# Formats hub.export writes (named here so torch-free code can list them; checkpoint layouts: hub.convert.layouts).
EXPORT_FORMATS = ("onnx", "triton", "torchvision", "timm", "detectron2", "mmdet")
INSTANCE_KINDS = ("cpu", "gpu")  # where a Triton model instance runs (byol-hub export --format triton)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes ``pixel_values``: resize the shorter side, center crop, scale, normalize."""

    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}; accepted: {', '.join(INTERPOLATIONS)}")
        if not 0 < self.crop_size <= self.resize_size:
            raise ConfigError(f"need 0 < crop_size <= resize_size, got {self.crop_size} and {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three values each, std positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


@dataclass
class ModelConfig:
    """Everything needed to rebuild, describe and feed a :class:`hub.BYOLModel`.

    Example:
        >>> cfg = ModelConfig(architecture="resnet18")
        >>> cfg.dims("gap")["avgpool"]
        512
    """

    architecture: str = "resnet50"
    stem: str = "imagenet"
    padding: str = "torch"
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    name: str | None = None
    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=lambda: ["imagenet-1k"])
    zoo: str | None = None
    demo: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None
    onnx: dict[str, Any] = field(default_factory=dict)
    # the transformers/ subfolder (ResNetModel): {"subfolder": ..., "sha256": {file: sha256}}; empty when absent
    transformers: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.preprocessing, dict):
            self.preprocessing = PreprocessConfig(**self.preprocessing)
        if self.architecture not in ARCHS:
            raise ConfigError(f"unknown architecture {self.architecture!r}; accepted: {', '.join(ARCHS)}")
        if self.stem not in STEMS:
            raise ConfigError(f"unknown stem {self.stem!r}; accepted: {', '.join(STEMS)}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"unknown padding {self.padding!r}; accepted: {', '.join(PADDINGS)}")
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"config format_version {self.format_version} is newer than this package understands "
                f"({FORMAT_VERSION}); upgrade the package"
            )

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop_size

    @property
    def num_features(self) -> int:
        return ARCHS[self.architecture].num_features

    def layer_dims(self) -> dict[str, dict[str, int | None]]:
        return layer_dims(self.architecture, self.stem, self.input_size)

    def dims(self, pooling: str = "gap") -> dict[str, int | None]:
        """Embedding size of each layer under ``pooling`` (``None`` where it does not apply)."""
        return {layer: d[pooling] for layer, d in self.layer_dims().items()}

    def to_dict(self) -> dict[str, Any]:
        """Our own fields (what ``from_dict`` reads back); ``save`` adds timm's keys beside them."""
        data = asdict(self)
        data["preprocessing"]["mean"] = list(self.preprocessing.mean)
        data["preprocessing"]["std"] = list(self.preprocessing.std)
        data["layers"] = self.layer_dims()  # derived; written for readers in other languages
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        from hub.interop import TIMM_KEYS, check_timm_keys

        data = dict(data)
        data.pop("layers", None)
        timm = {key: data.pop(key) for key in TIMM_KEYS if key in data}  # written by save() for timm/transformers
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config.json has unknown field(s) {unknown}; accepted: {sorted(known)}")
        if "architecture" not in data:
            raise ConfigError("config.json has no 'architecture'; is this a byol model folder?")
        pre = data.get("preprocessing")
        if isinstance(pre, dict):
            try:
                data["preprocessing"] = PreprocessConfig(**pre)
            except TypeError as err:
                raise ConfigError(f"bad 'preprocessing' in config.json: {err}") from None
        config = cls(**data)
        check_timm_keys(timm, config)
        return config

    def save(self, folder: str | Path) -> Path:
        from hub.interop import timm_keys
        from storage.files import atomic_write_text

        path = Path(folder) / CONFIG_NAME
        data = self.to_dict()
        data.update(timm_keys(self))  # timm (and transformers' timm wrapper) read these; the architecture is shared
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no {CONFIG_NAME} at {path}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)
