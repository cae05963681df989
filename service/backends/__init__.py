"""Backends behind one interface (``Backend``): one file per runtime."""

from __future__ import annotations

from hub.hub_io import ResolvedModel
from service.backends.base import Backend
from service.settings import ServiceSettings


def build_backend(resolved: ResolvedModel, settings: ServiceSettings) -> Backend:
    """The backend the settings ask for (imports torch only for the torch backend)."""
    if settings.backend == "onnx":
        from service.backends.onnx import OnnxBackend

        return OnnxBackend(resolved, precision=settings.precision, threads=settings.threads,
                           device=settings.device)
    from service.backends.torch_backend import TorchBackend

    return TorchBackend(resolved, device=settings.device, precision=settings.precision,
                        channels_last=settings.channels_last, threads=settings.threads)


__all__ = ["Backend", "build_backend"]
