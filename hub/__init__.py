"""``hub``: the BYOL feature model and all weight I/O.

Torch-free modules (``config``, ``layers``, ``preprocess``, ``hub_io.resolve_model``, ``card``,
``zoo``) can be imported without torch installed; ``BYOLModel`` (which needs torch) is imported
lazily on first access, so ``from hub import BYOLModel`` works and ``import hub`` stays light.
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
