"""``hub``: the BYOL feature model and its weights, the only package that knows how they are laid out.

The model (``model``, ``layers``, ``config``, ``preprocess``), its folders on disk and on the Hugging Face Hub
(``hub_io``, ``card``, ``interop`` for timm and transformers, ``zoo``), converters from the checkpoints people
already have (``convert``) and exports (``export``). Where data lives is :mod:`storage`'s business, not this one's.

Torch-free modules (``config``, ``layers``, ``preprocess``, ``hub_io.resolve_model``, ``card``, ``zoo``,
``interop``, ``convert.layouts``) can be imported without torch installed; ``BYOLModel`` (which needs torch) is
imported lazily on first access, so ``from hub import BYOLModel`` works and ``import hub`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.config import ModelConfig, PreprocessConfig
from hub.errors import (
    CheckpointFormatError,
    ConfigError,
    ExportError,
    HubError,
    ImageDecodeError,
    LayerError,
    ModelNotFoundError,
    WeightsIntegrityError,
    WeightsMismatchError,
)
from hub.layers import FEATURE_LAYERS, LAYERS, POOLINGS

if TYPE_CHECKING:
    from hub.model import BYOLModel

__all__ = [
    "BYOLModel", "ModelConfig", "PreprocessConfig", "FEATURE_LAYERS", "LAYERS", "POOLINGS", "HubError",
    "ConfigError", "LayerError", "WeightsMismatchError", "CheckpointFormatError", "ModelNotFoundError",
    "ExportError", "ImageDecodeError", "WeightsIntegrityError",
]


def __getattr__(name: str) -> Any:
    if name == "BYOLModel":
        from hub.model import BYOLModel

        return BYOLModel
    raise AttributeError(f"module 'hub' has no attribute {name!r}")
