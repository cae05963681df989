"""The settings of the runtime both programs share (the model, its backend and how it runs): ``BYOL_*``
environment variables, ``byol-serve`` options, or ``byol-embed run`` options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Which model runs, and how. Each field reads ``BYOL_<NAME>`` (e.g. ``BYOL_MODEL``). The server's settings
    (:class:`service.server.settings.ServiceSettings`) extend these; the embedding job holds one."""

    # hide_input_in_errors: an invalid setting's message never echoes its value (a key, a storage option)
    model_config = SettingsConfigDict(env_prefix="BYOL_", extra="ignore", hide_input_in_errors=True)

    model: str = Field("models/default", description="model folder or Hub repo id (org/name)")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    cache_dir: str | None = Field(None, description="Hugging Face cache folder (default: HF_HOME's)")
    local_files_only: bool = Field(False, description="never contact the Hub; use the cache only")
    backend: Literal["onnx", "torch"] = Field("onnx", description="onnx (ONNX Runtime, no torch needed) or torch")
    device: str = Field("cpu", description="torch backend: cpu, cuda or cuda:N; onnx: cpu or cuda; auto: cuda where "
                        "the torch backend sees one, else cpu")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="fp32; int8 (ONNX, needs model.int8.onnx); fp16 (torch on CUDA)")
    channels_last: bool = Field(True, description="torch backend: channels_last memory format")
    threads: int = Field(0, ge=0, description="inference threads in all (0: all cores), shared by the streams")
    inference_streams: int = Field(
        0, ge=0, description="batches run at once, each on threads/streams cores (Triton's instance count, "
        "OpenVINO's streams): while one stream's clients send their next images and those are decoded, the other "
        "keeps the cores busy. 0: automatic -- 2 for ONNX Runtime on a CPU with 2 or more threads (measured: more "
        "images/s under load than one 2-thread session, at the price of a slower lone request), 1 otherwise; "
        "1: lowest latency for a single request")
    max_pixels: int = Field(40_000_000, ge=1, description="pixels per image, checked on its header before decoding")

    def resolved_device(self) -> str:
        """``device``, with ``auto`` made ``cuda`` (the torch backend on a machine whose torch sees a GPU) or ``cpu``."""
        if self.device != "auto":
            return self.device
        if self.backend == "torch":
            try:
                import torch
            except ImportError:
                return "cpu"
            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cpu"

    # fields that may name a local path: made absolute for processes elsewhere (another working directory)
    LOCAL_PATHS: ClassVar[tuple[str, ...]] = ("model", "cache_dir")

    def portable(self) -> dict[str, Any]:
        """The settings for processes started elsewhere (Ray Serve replicas, Ray actors): every value resolved
        here (they may run on nodes without this shell's BYOL_* variables), local paths made absolute (their
        working directory is not this one's)."""
        values = self.model_dump()
        for key in self.LOCAL_PATHS:
            if values.get(key) and "://" not in values[key] and Path(values[key]).exists():
                values[key] = str(Path(values[key]).resolve())
        return values


def add_settings_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: type[BaseSettings], *,
                         skip: tuple[str, ...] = (), many: tuple[str, ...] = (),
                         defaults: dict[str, Any] | None = None) -> None:
    """One option per field of ``settings`` (``--max-pixels`` for ``max_pixels``), its help the field's
    description with its ``BYOL_*`` variable and default: the settings model is the one place an option is
    declared. Unset options parse as None, so the settings' own defaults and environment apply
    (:func:`settings_overrides`); ``defaults`` overrides a default for this program (said in the help)."""
    defaults = defaults or {}
    for name, field in settings.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        default = defaults.get(name, field.default if field.default_factory is None else field.default_factory())
        text = f"{field.description} [env BYOL_{name.upper()}; default {default!r}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name in many:
            parser.add_argument(flag, dest=name, nargs="*", default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, default=defaults.get(name), help=text)


def settings_overrides(args: argparse.Namespace, settings: type[BaseSettings]) -> dict[str, Any]:
    """The options given on the command line (and program defaults), for ``settings(**overrides)``."""
    return {k: v for k, v in vars(args).items() if v is not None and k in settings.model_fields}
