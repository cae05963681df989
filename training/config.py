"""Training configuration: one typed dataclass, named presets as YAML files, command-line overrides.

``--config NAME`` loads ``training/configs/NAME.yaml`` (or a path to a YAML file); every field can then
be overridden as ``--field-name VALUE``. The resolved config is saved in the run folder and the card.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hub.errors import ConfigError  # one ConfigError for the whole project (unknown preset, key or value)
from training.precision import CPU_PRECISIONS

__all__ = ["ConfigError", "TrainConfig", "add_config_arguments", "load_preset", "preset_names", "resolve_config"]
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    name: str = field(default="custom", metadata={"help": "config name, recorded in the run and the card"})
    # network
    architecture: str = field(default="resnet50", metadata={"help": "resnet18/34/50/101/152"})
    stem: str = field(default="imagenet", metadata={"help": "imagenet (7x7 conv + max-pool) or cifar (3x3, no max-pool)"})
    projector_hidden: int = field(default=4096, metadata={"help": "projector hidden width"})
    projector_out: int = field(default=256, metadata={"help": "projection size"})
    predictor_hidden: int = field(default=4096, metadata={"help": "predictor hidden width"})
    # data and augmentation
    dataset_name: str = field(default="imagenet-1k", metadata={"help": "dataset name for the card"})
    image_size: int = field(default=224, metadata={"help": "crop size of the views"})
    crop_scale_min: float = field(default=0.08, metadata={"help": "RandomResizedCrop minimum area fraction"})
    blur_probs: list[float] = field(default_factory=lambda: [1.0, 0.1],
                                    metadata={"help": "Gaussian blur probability of view 1 and view 2"})
    solarize_probs: list[float] = field(default_factory=lambda: [0.0, 0.2],
                                        metadata={"help": "solarize probability of view 1 and view 2"})
    augment_backend: str = field(default="opencv", metadata={
        "help": "opencv | pil | device: where and how the views are made; all apply the same drawn parameters "
                "(crop, flip, jitter order and factors, grayscale, blur sigma, solarize). opencv and pil run in the "
                "loader workers (opencv measured 2.7x faster per core); device decodes JPEGs on the training device "
                "(torchvision decode_jpeg, the GPU there) and applies the recipe as batched per-sample tensor ops, so "
                "a GPU is not capped by the CPUs' augmentation"})
    low_res_scale: float = field(default=0.0, metadata={
        "help": "progressive resizing: after the budget's calibration steps, the views are shrunk to this fraction "
                "of image_size (0.75: 64 -> 48) for the first low_res_fraction of the optimizer steps, then trained "
                "at image_size (0: off)"})
    low_res_fraction: float = field(default=0.6, metadata={"help": "the share of the steps made at low_res_scale"})
    eval_resize: int = field(default=256, metadata={"help": "resize of the published model's preprocessing"})
    num_workers: int = field(default=8, metadata={
        "help": "data loader worker processes per rank; -1: one per two cores this process may use (at least one)"})
    decode_cache_mb: int = field(default=0, metadata={
        "help": "opencv/pil backends: keep decoded images in memory, up to this many MiB per loader worker, each "
                "shrunk to a shorter side of 2 x image_size: decoded once, augmented from uint8 every epoch (0: off)"})
    # batch and schedule
    batch_size_per_device: int = field(default=64, metadata={"help": "images per device per micro-batch"})
    grad_accum_steps: int = field(default=8, metadata={"help": "micro-batches per optimizer step"})
    total_batch_size: int = field(default=4096, metadata={
        "help": "the recipe's optimizer batch; if world x per-device x accumulation differs, the lr is scaled "
                "linearly (base_lr x actual batch / 256) and a warning says so"})
    epochs: int = field(default=200, metadata={"help": "training epochs"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: run all epochs)"})
    time_budget_min: float = field(default=0.0, metadata={
        "help": "plan the run to fit this many wall-clock minutes (0: no budget): the step time is measured over "
                "the first steps, then warmup, cosine lr and tau are compressed to end inside the budget, checkpoints, "
                "kNN monitor and final export counted; the plan is kept in the checkpoints (a resume does not re-plan) "
                "and recorded in the run and the card"})
    # optimizer
    base_lr: float = field(default=0.3, metadata={"help": "lr per 256 images (lr = base_lr x batch / 256)"})
    momentum: float = field(default=0.9, metadata={"help": "LARS momentum"})
    weight_decay: float = field(default=1e-6, metadata={"help": "weight decay (not on biases and BN)"})
    lars_eta: float = field(default=0.001, metadata={"help": "LARS trust coefficient"})
    warmup_epochs: float = field(default=10, metadata={"help": "linear warmup epochs before the cosine"})
    # target network
    tau_base: float = field(default=0.99, metadata={"help": "EMA coefficient at the start"})
    tau_hold_fraction: float = field(default=0.05, metadata={"help": "fraction of steps tau_base is held before the cosine"})
    # precision and devices
    mixed_precision: str = field(default="fp16", metadata={
        "help": "fp16 | bf16 | no on GPUs; on CPU fp16 maps to cpu_precision"})
    cpu_precision: str = field(default="auto", metadata={
        "help": "auto | bf16 | no (fp32): what fp16 becomes on CPU; auto picks bf16 only where the CPU has native "
                "bf16 (avx512_bf16 or AMX), fp32 otherwise (emulated bf16 measured 7x slower)"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    sync_bn: bool = field(default=True, metadata={"help": "SyncBatchNorm across GPU processes (CUDA only)"})
    fuse_views: bool = field(default=True, metadata={
        "help": "run both views as one batch with per-view BatchNorm statistics (the same method as one forward per "
                "view, tested); used on GPUs, under mixed precision and in fp32 on CPU with channels_last (measured "
                "+5 %% there, ResNet-50 64² batch 32), not under SyncBatchNorm"})
    machine_settings: bool = field(default=False, metadata={
        "help": "choose precision, batch and where the crops are made from the machine (training/machine.py); "
                "fields given on the command line are kept"})
    # bookkeeping
    seed: int = field(default=0, metadata={"help": "seed of init, shuffling and augmentation"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between log lines"})
    checkpoint_every: int = field(default=500, metadata={"help": "optimizer steps between checkpoints (and every epoch end)"})
    epoch_checkpoints: bool = field(default=True, metadata={"help": "also checkpoint at every epoch end"})
    checkpoint_every_min: float = field(default=0.0, metadata={
        "help": "also checkpoint every this many wall-clock minutes (0: off)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "complete checkpoints kept"})
    knn_monitor: str = field(default="", metadata={
        "help": "folder with train/ and val/ ImageFolder trees: weighted kNN (k=20) of the online encoder at "
                "every epoch end, logged as knn_top1 (main process; empty: off)"})
    label_free_sample: int = field(default=512, metadata={
        "help": "hold out this many training images (at most a tenth of them; none under 160 images) and log RankMe "
                "and the std of the L2-normalized avgpool outputs on them, label_free_evals times over the run, and "
                "every layer's in the card (0: off)"})
    label_free_evals: int = field(default=10, metadata={"help": "label-free evaluations over the run (and the last step)"})
    keep_best: str = field(default="", metadata={
        "help": "rankme: publish the weights of the label-free evaluation with the highest RankMe (kept in "
                "OUTPUT/best/), not the last step's, among those after the run's lowest RankMe (it falls from the "
                "random initialisation's high rank before it rises with the features: a run still falling keeps its "
                "last step); empty: the last step's"})
    export_onnx: bool = field(default=True, metadata={"help": "write model.onnx into the final folder"})
    export_transformers: bool = field(default=True, metadata={
        "help": "write the transformers/ subfolder (transformers' ResNetModel) into the final folder; doubles its size"})
    demo: bool = field(default=False, metadata={"help": "mark the published model as a demo model"})

    def __post_init__(self) -> None:
        for name in ("batch_size_per_device", "grad_accum_steps", "total_batch_size", "epochs", "image_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.total_batch_size % (self.batch_size_per_device * self.grad_accum_steps):
            raise ConfigError(
                f"total_batch_size {self.total_batch_size} is not divisible by batch_size_per_device x grad_accum_steps "
                f"= {self.batch_size_per_device * self.grad_accum_steps}")
        if self.mixed_precision not in ("fp16", "bf16", "no"):
            raise ConfigError(f"mixed_precision {self.mixed_precision!r}; accepted: fp16, bf16, no")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ConfigError(f"cpu_precision {self.cpu_precision!r}; accepted: {', '.join(CPU_PRECISIONS)}")
        if self.augment_backend not in ("opencv", "pil", "device"):
            raise ConfigError(f"augment_backend {self.augment_backend!r}; accepted: opencv, pil, device")
        if self.low_res_scale and not 0.25 <= self.low_res_scale < 1.0:
            raise ConfigError(f"low_res_scale {self.low_res_scale} must be in [0.25, 1) (0: off)")
        if not 0.0 <= self.low_res_fraction <= 1.0:
            raise ConfigError(f"low_res_fraction must be in [0, 1], got {self.low_res_fraction}")
        if self.keep_best not in ("", "rankme"):
            raise ConfigError(f"keep_best {self.keep_best!r}; accepted: rankme, or empty (the last step's weights)")
        if self.keep_best and self.label_free_sample <= 0:
            raise ConfigError("keep_best rankme needs the label-free monitor: label_free_sample must be > 0")
        if self.label_free_evals < 1:
            raise ConfigError(f"label_free_evals must be >= 1, got {self.label_free_evals}")
        if len(self.blur_probs) != 2 or len(self.solarize_probs) != 2:
            raise ConfigError("blur_probs and solarize_probs take two values (view 1, view 2)")

    @property
    def low_res_size(self) -> int:
        """The views' size during the low-resolution phase (0: no such phase)."""
        return round(self.image_size * self.low_res_scale) if self.low_res_scale else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_type(f: dataclasses.Field) -> Any:
    return typing.get_type_hints(TrainConfig)[f.name]


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown config {name_or_path!r}; presets: {', '.join(preset_names())} (or a .yaml path)")
    data = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    data.setdefault("name", path.stem)
    return data


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per config field, with its help; defaults stay None (= from the preset)."""
    group = parser.add_argument_group("config overrides (any field of the preset)")
    for f in fields(TrainConfig):
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default {default})"
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            group.add_argument(flag, dest=f.name, type=float, nargs="+", default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def resolve_config(preset: str, args: argparse.Namespace | None = None) -> TrainConfig:
    data = load_preset(preset)
    if args is not None:
        for f in fields(TrainConfig):
            value = getattr(args, f.name, None)
            if value is not None:
                data[f.name] = value
    try:
        return TrainConfig(**data)
    except TypeError as err:
        raise ConfigError(str(err)) from None
