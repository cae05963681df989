"""Exceptions raised by ``hub``. Each message says what was wrong and what is accepted.

All of them derive from :class:`HubError` (a ``ValueError``), so callers that only want
"bad input" can catch one type; the service maps them to HTTP statuses in one place.
"""

from __future__ import annotations


class HubError(ValueError):
    """Base class for every error ``hub`` raises on bad input."""


class ConfigError(HubError):
    """A ``config.json`` or a requested setting is invalid or unsupported."""


class LayerError(HubError):
    """An unknown layer or pooling name, or a pooling that cannot apply to this model."""


class WeightsMismatchError(HubError):
    """Weights do not fit the model: missing, unexpected or mis-shaped keys (never half-loaded)."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        super().__init__("weights do not match the model config; " + "; ".join(parts))


class WeightsIntegrityError(HubError):
    """A file's sha256 differs from the one ``config.json`` records (an interrupted save, or a changed file)."""

    def __init__(self, name: str, actual: str, expected: str) -> None:
        self.name, self.actual, self.expected = name, actual, expected
        super().__init__(f"{name} has sha256 {actual[:12]}... but config.json records {expected[:12]}...: the file "
                         "was changed or an interrupted save left it; save the model again (or pass "
                         "verify_sha256=False to load it anyway)")


class CheckpointFormatError(HubError):
    """A checkpoint's layout is not one the converters know, or it cannot be read safely."""


class ModelNotFoundError(HubError):
    """A model id or folder cannot be resolved to a model folder."""


class ExportError(HubError):
    """An export format cannot express this model (e.g. a CIFAR stem in a torchvision state dict)."""


class ImageDecodeError(HubError):
    """Bytes that are not a decodable image, or an image beyond the configured limits."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large
