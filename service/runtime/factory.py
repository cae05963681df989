"""Which backend runs the model, and how: the model folder a backend needs, the inference plan (streams x
threads), and the backend built from :class:`service.runtime.settings.RuntimeSettings`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hub.config import CARD_NAME, ONNX_INT8_NAME, ONNX_NAME, WEIGHTS_NAME
from hub.hardware import usable_cpus
from hub.hub_io import ResolvedModel, resolve_model
from service.runtime.backend import Backend
from service.runtime.settings import RuntimeSettings


def resolve_for_backend(settings: RuntimeSettings, maps: tuple[str, ...] = ()) -> ResolvedModel:
    """The model folder, fetching from the Hub only what the backend needs (no weights if ONNX is there; with
    ``maps``, the weights too: a graph that gives those maps may have to be exported)."""
    kwargs = dict(revision=settings.revision, cache_dir=settings.cache_dir, local_files_only=settings.local_files_only)
    graph = ONNX_INT8_NAME if settings.precision == "int8" else ONNX_NAME
    if settings.backend == "onnx" and maps:
        return resolve_model(settings.model, files=(WEIGHTS_NAME,), optional_files=(graph, CARD_NAME), **kwargs)
    if settings.backend == "onnx":
        resolved = resolve_model(settings.model, files=(), optional_files=(graph, CARD_NAME), **kwargs)
        if (resolved.folder / graph).exists():
            return resolved
    return resolve_model(settings.model, files=(WEIGHTS_NAME,), optional_files=(CARD_NAME,), **kwargs)


@dataclass(frozen=True)
class InferencePlan:
    """How the server runs its model: ``streams`` batches at once, each on ``threads_per_stream`` threads."""

    streams: int
    threads_per_stream: int


def inference_plan(settings: RuntimeSettings) -> InferencePlan:
    """Streams and threads for the server (``inference_streams``, ``threads``). Only ONNX Runtime on a CPU runs
    several batches at once (its session runs are concurrent and each brings its own threads); torch shares one
    intra-op pool between callers, and a GPU is fed best by one stream."""
    threads = settings.threads or usable_cpus()  # a container's CPU quota, then affinity
    concurrent = settings.backend == "onnx" and not settings.device.startswith("cuda")
    streams = min(settings.inference_streams or 2, threads) if concurrent else 1
    return InferencePlan(streams, max(1, threads // streams))


class StreamedBackend(Backend):
    """A backend whose batches run as ``streams`` slices at once (the server's batcher runs whole batches on
    streams itself; the dataset job, which has one batch at a time, splits each batch instead). With one thread
    per slice no operator waits at a barrier for a thread that a decode thread has preempted."""

    def __init__(self, inner: Backend, streams: int) -> None:
        self.inner, self.streams = inner, streams
        self.name, self.precision = inner.name, inner.precision
        self._pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="byol-stream")

    @property
    def outputs(self) -> list[str]:
        return self.inner.outputs

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        if len(pixel_values) < 2:
            return self.inner.run(pixel_values)
        parts = list(self._pool.map(self.inner.run, np.array_split(pixel_values, min(self.streams, len(pixel_values)))))
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def build_planned_backend(resolved: ResolvedModel, settings: RuntimeSettings, plan: InferencePlan,
                          maps: tuple[str, ...] = ()) -> Backend:
    """The backend one stream of ``plan`` runs (its share of the threads)."""
    return build_backend(resolved, settings.model_copy(update={"threads": plan.threads_per_stream}), maps)


def build_streamed_backend(resolved: ResolvedModel, settings: RuntimeSettings, maps: tuple[str, ...] = ()) -> Backend:
    """The backend for one batch at a time (``byol-embed``): each batch split over the ``inference_plan``'s streams;
    ``maps``: layers whose whole maps it also gives (``featureK.map``, for region vectors)."""
    plan = inference_plan(settings)
    backend = build_planned_backend(resolved, settings, plan, maps)
    return StreamedBackend(backend, plan.streams) if plan.streams > 1 else backend


def build_backend(resolved: ResolvedModel, settings: RuntimeSettings, maps: tuple[str, ...] = ()) -> Backend:
    """The backend the settings ask for (imports torch only for the torch backend); ``maps``: layers whose whole
    maps it also gives."""
    if settings.backend == "onnx":
        from service.runtime.onnx import OnnxBackend

        return OnnxBackend(resolved, precision=settings.precision, threads=settings.threads,
                           device=settings.device, maps=tuple(maps))
    from service.runtime.torch import TorchBackend

    return TorchBackend(resolved, device=settings.device, precision=settings.precision,
                        channels_last=settings.channels_last, threads=settings.threads, maps=tuple(maps))


__all__ = ["Backend", "InferencePlan", "StreamedBackend", "build_backend", "build_planned_backend",
           "build_streamed_backend", "inference_plan", "resolve_for_backend"]
