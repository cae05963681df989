"""BYOL pretraining with Accelerate, from one CPU to many GPUs.

    accelerate launch training/pretrain.py --config byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200 \\
        --data /data/imagenet/train --output runs/byol-r50-ep200
    accelerate launch --cpu training/pretrain.py --config smoke --data photos/ --output runs/smoke
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 training/pretrain.py --config smoke ...
    accelerate launch training/pretrain.py --config ... --output runs/x --resume           # continue runs/x
    accelerate launch training/pretrain.py --config ... --output runs/x --resume runs/x/checkpoints/step_500

Run folder: OUTPUT/config.yaml (resolved config + reproducibility record), OUTPUT/checkpoints/step_N/
(complete checkpoints only; written under a temporary name and renamed), OUTPUT/logs/ (TensorBoard and
metrics.jsonl), OUTPUT/final/ (a hub model folder: BYOLModel.from_pretrained / byol-hub push work on it).

Precision on CPU: the presets ask for fp16, which on CPU becomes cpu_precision (auto: bf16 where the CPU
has native bf16, fp32 otherwise). A time budget (--time-budget-min) plans the schedule to end inside it.
"""

from __future__ import annotations

import time

PROCESS_START = time.monotonic()  # a time budget counts the whole process, imports included

import argparse
import dataclasses
import json
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (accelerate launch training/pretrain.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml

from hub import BYOLModel, ModelConfig, PreprocessConfig
from hub.provenance import git_commit, package_versions
from storage.files import atomic_write_text
from storage.location import add_storage_option, public_url
from training.augment import AugmentConfig, ViewParams
from training.byol import BYOL, projection_std
from training.checkpoints import (
    RUN_RECORD,
    STATE_FILE,
    check_same_method,
    find_resume_checkpoint,
    read_state,
    save_checkpoint,
    update_state,
)
from training.config import ConfigError, TrainConfig, add_config_arguments, resolve_config
from training.data import (
    DataError,
    ResumableSampler,
    SubsetSource,
    TwoViewDataset,
    collate_raw,
    collate_views,
    device_views,
    hold_out,
    open_source,
    single_threaded_worker,
    steps_per_epoch,
    to_device_views,
)
from training.lars import LARS, lars_param_groups
from training.machine import machine_settings
from training.precision import precision_label, resolve_precision
from training.schedule_plan import (
    CALIBRATION_STEPS,
    StepPlan,
    ceil_epochs,
    config_plan,
    estimate_export_s,
    plan_for_budget,
)
from training.wallclock import WallClock

logger = logging.getLogger("training.pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name in training/configs/ (e.g. smoke, "
                        "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200) or a .yaml path")
    parser.add_argument("--data", required=True,
                        help="folder of images (recursive), .txt list of paths, .tar shards (a file, a folder, a glob "
                             "or a brace range train-{000000..000999}.tar), or Parquet with the image bytes inside (a "
                             "file, a glob or a folder: Hugging Face datasets' Image column or a binary column, found "
                             "or named by --image-column); local, or a URL (s3://, gs://, az://, "
                             "hf://datasets/ORG/NAME/...) read through fsspec with the provider's standard credentials")
    add_storage_option(parser, "a --data URL")
    parser.add_argument("--image-column", default=None,
                        help="Parquet --data: the column of image bytes (default: found; 'image' where there are several)")
    parser.add_argument("--output", required=True, help="run folder (config.yaml, checkpoints/, logs/, final/)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="RUN_OR_CHECKPOINT",
                        help="continue a run: no value = the newest complete checkpoint in OUTPUT; a run folder = its "
                             "newest complete checkpoint; a checkpoint folder (checkpoints/step_N) = that one. No "
                             "complete checkpoint, or a config that changes the method, is an error")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, run one optimizer step on one micro-batch, print timings, exit "
                             "(no checkpoint, no published model)")
    parser.add_argument("--model-name", default=None, help="model id recorded in the final card (default: run folder name)")
    add_config_arguments(parser)
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: build the run


@dataclass
class Run:
    """Everything the loop needs, built once."""

    cfg: TrainConfig
    output: Path
    accelerator: Any
    precision: str
    dataset: TwoViewDataset
    model_config: ModelConfig
    model: torch.nn.Module  # prepared (maybe DDP-wrapped)
    byol: BYOL  # the unwrapped model: EMA and publishing act on it
    optimizer: LARS
    peak_lr: float
    plan: StepPlan
    record: dict[str, Any]
    step: int = 0
    started: float = 0.0  # time.monotonic() at start
    budget_spent_s: float = 0.0  # wall seconds a resumed run had already spent
    last_loss: float = float("nan")  # the last logged loss (kept in checkpoints: a resumed card keeps it)
    dry_run: bool = False
    clock: WallClock | None = None  # where this process's wall time went
    source: Any = None  # the whole input (the held-out sample included)
    held: list[int] = dataclasses.field(default_factory=list)  # the label-free sample's indices in ``source``
    best: dict[str, Any] | None = None  # keep_best: the best evaluation so far ({"step", "rankme"})
    low_res_end: int | None = None  # progressive resizing: the step the full size began
    last_save_s: float = 0.0  # wall_s at the last checkpoint (time-based checkpoints)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def wall_s(self) -> float:
        """Wall seconds of the run so far, a resumed run's earlier processes included."""
        return self.budget_spent_s + time.monotonic() - self.started

    def trainer_state(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "budget_spent_s": self.wall_s, "last_loss": self.last_loss,
                "low_res_end": self.low_res_end}

    def low_res_now(self) -> bool:
        """Progressive resizing: whether this step's views are shrunk. The low-resolution phase starts after the
        budget's calibration steps and ends once ``low_res_fraction`` of the planned steps are done; that step is
        kept (a later re-plan never brings the low size back)."""
        if not self.cfg.low_res_size or self.step < CALIBRATION_STEPS or self.low_res_end is not None:
            return False
        if self.step >= self.plan.total_steps * self.cfg.low_res_fraction:
            self.low_res_end = self.step
            return False
        return True

    def budget_outcome(self, stopped_by_budget: bool) -> dict[str, Any] | None:
        """What a time budget planned and what was done (None without a budget): for the run record and the card."""
        if not self.plan.budget:
            return None
        return {**self.plan.budget, "done_steps": self.step, "wall_min": round(self.wall_s / 60, 2),
                "stopped_by_budget": stopped_by_budget}

    def save(self) -> None:
        with self.clock.section("checkpoints") if self.clock else nullcontext():
            save_checkpoint(self.accelerator, self.output, self.step, self.cfg.keep_checkpoints, self.trainer_state())
        self.last_save_s = self.wall_s

    def checkpoint_due(self) -> bool:
        """A checkpoint every ``checkpoint_every`` steps, at epoch ends (``epoch_checkpoints``), and every
        ``checkpoint_every_min`` minutes of wall time; never after the last step (the final save follows)."""
        cfg = self.cfg
        if self.dry_run or self.step >= self.plan.total_steps:
            return False
        return (self.step % cfg.checkpoint_every == 0
                or (cfg.epoch_checkpoints and self.step % self.plan.steps_per_epoch == 0)
                or (cfg.checkpoint_every_min > 0 and self.wall_s - self.last_save_s >= cfg.checkpoint_every_min * 60))

    def write_record(self) -> None:
        if self.main:
            self.output.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output / RUN_RECORD, yaml.safe_dump(self.record, sort_keys=False))


def dry_run_overrides(cfg: TrainConfig) -> TrainConfig:
    """A dry run is one optimizer step on one micro-batch, with nothing that outlives it."""
    return dataclasses.replace(cfg, grad_accum_steps=1, total_batch_size=cfg.batch_size_per_device, max_steps=1,
                               epochs=1, time_budget_min=0.0, knn_monitor="", export_onnx=False,
                               label_free_sample=0, keep_best="")


def make_accelerator(cfg: TrainConfig, output: Path, explicit: set[str] = frozenset()):
    """``(accelerator, precision, reason, cfg, machine choices)``: ``cfg`` with the machine's settings applied
    where it asks for them (:func:`training.machine.machine_settings`)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration
    from accelerate.utils.environment import parse_flag_from_env

    # PartialState does not read ACCELERATE_USE_CPU itself (Accelerator does): without it, torchrun on a
    # machine with no GPU would give N independent single-process runs instead of N MULTI_CPU ranks.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    bf16 = state.device.type == "cuda" and torch.cuda.is_bf16_supported()
    cfg, chosen = machine_settings(cfg, state.device.type, state.num_processes, set(explicit), bf16)
    precision, reason = resolve_precision(cfg.mixed_precision, cfg.cpu_precision, state.device.type)
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=str(output),
                                                                  logging_dir=str(output / "logs")))
    return accelerator, precision, reason, cfg, chosen


def build_run(args: argparse.Namespace, started: float | None = None) -> Run:
    """``started``: ``time.monotonic()`` when the run began (the process's start when run as a script)."""
    started = time.monotonic() if started is None else started
    cfg = resolve_config(args.config, args)
    if args.dry_run:
        cfg = dry_run_overrides(cfg)
    output = Path(args.output)
    explicit = {f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
    accelerator, precision, reason, cfg, chosen = make_accelerator(cfg, output, explicit)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format=f"%(asctime)s [rank {accelerator.process_index}] %(levelname)s %(message)s")
    if chosen:
        logger.info("settings chosen for this machine: %s", "; ".join(f"{k} {v} ({why})" for k, (v, why) in
                                                                        chosen.items()))
    device, world = accelerator.device, accelerator.num_processes
    logger.info("%s on %s x %d (%s), precision %s (%s; config asked %s)", cfg.name, device.type, world,
                accelerator.distributed_type, precision_label(precision), reason, cfg.mixed_precision)

    # data: two augmented views per image, randomness from (seed, epoch, index)
    augment = AugmentConfig(size=cfg.image_size, scale=(cfg.crop_scale_min, 1.0),
                            view1=ViewParams(cfg.blur_probs[0], cfg.solarize_probs[0]),
                            view2=ViewParams(cfg.blur_probs[1], cfg.solarize_probs[1]))
    source = open_source(args.data, image_column=args.image_column,
                         storage_options=args.storage_options)
    held: list[int] = []
    if cfg.label_free_sample > 0:
        kept, held = hold_out(len(source), cfg.label_free_sample, cfg.seed)
        if held:
            logger.info("label-free monitor: %d of %d images held out (never trained on)", len(held), len(source))
        else:
            logger.info("label-free monitor off: %d images are too few to hold out a sample (at least 160 needed)",
                        len(source))
            if cfg.keep_best:
                raise DataError(f"--keep-best {cfg.keep_best} needs a held-out sample, and {len(source)} images are "
                                "too few (at least 160); drop --keep-best")
    dataset = TwoViewDataset(SubsetSource(source, kept) if held else source, augment, cfg.seed, cfg.augment_backend,
                             cfg.decode_cache_mb)
    if chosen and "batch_size_per_device" in chosen and len(dataset) < world * cfg.batch_size_per_device * \
            cfg.grad_accum_steps:  # a small folder still trains: the largest power of two that one step can fill
        fit = 2 ** max(int(np.log2(max(len(dataset) // (world * cfg.grad_accum_steps), 2))), 1)
        cfg = dataclasses.replace(cfg, batch_size_per_device=fit, total_batch_size=fit * cfg.grad_accum_steps * world)
        chosen["batch_size_per_device"] = [fit, f"{len(dataset)} images fill no larger step"]
        chosen["total_batch_size"] = [cfg.total_batch_size, "the batch actually used"]
        logger.info("batch %d per device: %d training images fill no larger step", fit, len(dataset))
    batch, accum = cfg.batch_size_per_device, cfg.grad_accum_steps
    spe = steps_per_epoch(len(dataset), world, batch, accum)
    plan = config_plan(spe, cfg.epochs, cfg.warmup_epochs, cfg.max_steps)

    # lr scaled linearly with the optimizer batch actually used
    actual_batch = world * batch * accum
    peak_lr = cfg.base_lr * actual_batch / 256
    if actual_batch != cfg.total_batch_size:
        logger.warning("optimizer batch is %d x %d x %d = %d, not the config's %d: lr scaled linearly to "
                       "base_lr %.3g x %d / 256 = %.4g", world, batch, accum, actual_batch, cfg.total_batch_size,
                       cfg.base_lr, actual_batch, peak_lr)

    # model and optimizer
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    model_config = ModelConfig(architecture=cfg.architecture, stem=cfg.stem,
                               preprocessing=PreprocessConfig(resize_size=cfg.eval_resize, crop_size=cfg.image_size),
                               datasets=[cfg.dataset_name])
    sync = world > 1 and cfg.sync_bn and device.type == "cuda"
    # SyncBatchNorm replaces the per-view BatchNorm: then views must go through one at a time
    # fused views pay off on GPUs, under mixed precision, and in fp32 on CPU with channels_last (measured: +5 %
    # over one forward per view, ResNet-50 64² batch 32); without channels_last fp32 CPU runs per view
    fuse = cfg.fuse_views and not sync and (device.type != "cpu" or precision != "no" or cfg.channels_last)
    model = BYOL(model_config, cfg.projector_hidden, cfg.projector_out, cfg.predictor_hidden, fuse_views=fuse)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        logger.info("SyncBatchNorm across %d GPU processes", world)
    elif world > 1 and cfg.sync_bn:
        logger.warning("SyncBatchNorm runs only on CUDA: %d CPU processes use per-process BatchNorm", world)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = LARS(lars_param_groups([model.online, model.predictor]), lr=peak_lr, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
    model, optimizer = accelerator.prepare(model, optimizer)

    record = {"config": cfg.to_dict(), "data": public_url(str(args.data)), "dataset_size": len(dataset), "world_size": world,
              "optimizer_batch": actual_batch, "lr": peak_lr, "precision": precision, "precision_reason": reason,
              "steps_per_epoch": spe, "total_steps": plan.total_steps, "git_commit": git_commit(),
              "versions": package_versions()}
    if held:
        record["label_free_held_out"] = len(held)
    if chosen:
        record["machine_settings"] = chosen
    run = Run(cfg, output, accelerator, precision, dataset, model_config, model, accelerator.unwrap_model(model),
              optimizer, peak_lr, plan, record, started=started, dry_run=args.dry_run, clock=WallClock(started),
              source=source, held=held)
    if args.resume:
        resume(run, args.resume)
    run.write_record()
    return run


def resume(run: Run, resume_arg: str) -> None:
    """Load the checkpoint ``--resume`` names, after checking that it is the same method."""
    checkpoint = find_resume_checkpoint(resume_arg, run.output)
    check_same_method(checkpoint, run.cfg.to_dict(), run.record)
    run.accelerator.load_state(str(checkpoint))
    state = read_state(checkpoint)
    run.step = state["step"]
    if "plan" in state:  # a budgeted run keeps the plan it made: no re-planning on resume
        run.plan = StepPlan.from_dict(state["plan"])
        run.record["total_steps"] = run.plan.total_steps
        if run.plan.budget:
            run.record["time_budget"] = run.plan.budget
    run.budget_spent_s = state.get("budget_spent_s", 0.0)
    run.last_save_s = run.budget_spent_s
    run.best = read_best(run.output)
    run.last_loss = state.get("last_loss", float("nan"))
    run.low_res_end = state.get("low_res_end")
    logger.info("resumed from %s at step %d of %d", checkpoint, run.step, run.plan.total_steps)


def make_loader(run: Run) -> torch.utils.data.DataLoader:
    cfg, plan = run.cfg, run.plan
    batch, world = cfg.batch_size_per_device, run.accelerator.num_processes
    per_epoch = plan.steps_per_epoch * cfg.grad_accum_steps * batch
    # the sampler covers the config's whole schedule; a budget plan just stops consuming it earlier
    full_steps = config_plan(plan.steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.max_steps).total_steps
    sampler = ResumableSampler(len(run.dataset), per_epoch, run.accelerator.process_index, world, cfg.seed,
                               start_epoch=run.step // plan.steps_per_epoch,
                               start=(run.step % plan.steps_per_epoch) * cfg.grad_accum_steps * batch,
                               end_epoch=ceil_epochs(max(full_steps, plan.total_steps), plan.steps_per_epoch))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", run.accelerator.num_processes))
    workers = loader_workers(cfg.num_workers, per_node)  # 0: the views are made here, between steps
    return torch.utils.data.DataLoader(run.dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                       collate_fn=collate_raw if cfg.augment_backend == "device" else collate_views,
                                       pin_memory=run.accelerator.device.type == "cuda" and cfg.augment_backend != "device",
                                       worker_init_fn=single_threaded_worker if workers > 0 else None,
                                       persistent_workers=workers > 0, drop_last=True,
                                       prefetch_factor=4 if workers > 0 else None)


def loader_workers(asked: int, processes_per_node: int) -> int:
    """``asked``, or for -1 one worker per two cores this process may use (its share of the node), at least one:
    on a CPU the workers' augmentation takes cores from the step, so they get half of them."""
    if asked >= 0:
        return asked
    return max(1, usable_cores() // max(processes_per_node, 1) // 2)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: the loop

BEST_DIR = "best"  # keep_best: OUTPUT/best/ is a hub model folder of the best weights so far, with best.json


def read_best(output: Path) -> dict[str, Any] | None:
    path = output / BEST_DIR / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None


class LabelFreeEvals:
    """RankMe and the normalized outputs' std of the online encoder on the held-out sample, ``label_free_evals``
    times over the run and at its last step (main process); with ``keep_best rankme``, the best weights so far
    are kept in OUTPUT/best/."""

    def __init__(self, run: Run) -> None:
        from training.evaluation.monitor import LabelFreeMonitor

        self.run = run
        self.monitor = (LabelFreeMonitor(run.source, run.held, run.model_config.preprocessing)
                        if run.held and run.main else None)
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0  # one evaluation, measured

    def due(self) -> bool:
        run, evals = self.run, self.run.cfg.label_free_evals
        if self.monitor is None:
            return False
        total = run.plan.total_steps
        return run.step == total or run.step * evals // total > (run.step - 1) * evals // total

    def __call__(self, log) -> None:
        run = self.run
        t0 = time.monotonic()
        with run.clock.section("evaluation"), run.accelerator.autocast():
            scores = self.monitor(run.byol.online.backbone)["avgpool"]
        entry = {"step": run.step, "rankme": scores["rankme"], "rankme_share": scores["rankme_share"],
                 "label_free_std": scores["std"]}
        log(entry)
        self.history.append(entry)
        logger.info("step %d: RankMe %.1f (%.0f%% of %d), std of normalized outputs %.4f (ideal %.4f) on %d held-out "
                    "images", run.step, scores["rankme"], 100 * scores["rankme_share"], min(scores["samples"],
                    scores["dim"]), scores["std"], scores["std_ideal"], scores["samples"])
        if run.cfg.keep_best:
            self.keep_best(scores)
        self.seconds = time.monotonic() - t0

    def keep_best(self, scores: dict[str, Any]) -> None:
        """The highest RankMe after the run's lowest. RankMe falls from the random initialisation's high rank over
        the first steps, then rises with the features' quality (measured in benchmarks/learning.py over one
        30-minute run: 272 at step 4, 46 at step 112, then up to 84 while kNN rose from 76 to 90; Spearman 0.93
        past the lowest). A new lowest resets the choice to itself: a run still falling keeps its last step."""
        run, rankme = self.run, scores["rankme"]
        # (a best.json written before the lowest was kept: its choice stands, by the highest alone)
        trough = run.best.get("trough_rankme", float("-inf")) if run.best else float("inf")
        if rankme < trough or rankme > run.best["rankme"]:
            run.best = {"step": run.step, "rankme": rankme, "label_free_std": scores["std"],
                        "trough_step": run.step if rankme < trough else run.best.get("trough_step"),
                        "trough_rankme": min(rankme, trough)}
            with run.clock.section("checkpoints"):
                save_best(run)


def online_encoder(run: Run, name: str) -> BYOLModel:
    """The online backbone as a standalone hub model (float32 weights, the run's preprocessing)."""
    encoder = BYOLModel(ModelConfig.from_dict(run.model_config.to_dict()))
    state = {k: v.detach().float().contiguous() for k, v in run.byol.online.backbone.state_dict().items()}
    encoder.load_state_dict(state, strict=True)
    encoder.config.name = name
    return encoder


def save_best(run: Run) -> None:
    """OUTPUT/best/: complete or absent (written aside, then renamed over the previous best)."""
    import shutil

    folder, staging, old = run.output / BEST_DIR, run.output / f".tmp_{BEST_DIR}", run.output / f".old_{BEST_DIR}"
    shutil.rmtree(staging, ignore_errors=True)
    online_encoder(run, f"{run.output.name}-best").save_pretrained(staging, onnx=False, transformers=False)
    atomic_write_text(staging / "best.json", json.dumps(run.best))
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


class Budget:
    """The time budget: calibrate over the first steps, plan once, and stop as a safety net if the plan overruns."""

    def __init__(self, run: Run, monitor_images: int, label_free: LabelFreeEvals | None = None) -> None:
        self.run = run
        self.label_free = label_free
        self.seconds = run.cfg.time_budget_min * 60
        self.monitor_images = monitor_images
        self.active = self.seconds > 0
        self.planned = bool(run.plan.budget)
        self.calibration_start = run.step
        self.t_first: float | None = None
        self.full = run.plan  # the config's plan, what a budget plan fits
        self.checkpoint_s = 0.0
        self.full_step_s = self.low_step_s = 0.0  # progressive resizing: a step at each size
        self.switch_pending = False  # progressive resizing: the re-plan after the switch to the full size is to come
        self.mark: tuple[float, float, int] | None = None
        self.replan_at: int | None = None  # the step of the next re-plan
        self.late_replan_done = False  # the last re-plan, halfway through the steps left after the others

    def deadline_passed(self) -> bool:
        if not self.active:
            return False
        flag = torch.tensor(float(self.run.wall_s >= self.seconds), device=self.run.accelerator.device)
        return bool(self.run.accelerator.gather(flag).max() > 0)

    def after_step(self, log) -> None:
        """Time the calibration steps; after the last one, measure a checkpoint and plan the schedule. Once the run
        has taken an eighth of the plan's steps (at least 10), plan again from the step time measured over them
        (the first steps run slower: allocations, caches still filling), so that the run uses its budget; with
        progressive resizing, once more 10 steps after the switch to the full size, from those steps; and last,
        halfway through the steps then left, from the steps since."""
        run = self.run
        if not self.active:
            return
        if self.planned:
            if self.replan_at is not None and run.step >= self.replan_at:
                self._replan(log)
            if self.switch_pending and self.mark is not None and run.low_res_end is not None:
                self.switch_pending = False  # the full size from here: time it over 10 steps, then plan again
                self.mark, self.replan_at = self._mark(), run.step + 10
            return
        done = run.step - self.calibration_start
        if done == 1:
            _sync(run.accelerator.device)
            self.t_first = time.monotonic()
        if done < CALIBRATION_STEPS:
            return
        _sync(run.accelerator.device)
        step_s = (time.monotonic() - self.t_first) / (CALIBRATION_STEPS - 1)
        t0 = time.monotonic()
        run.save()
        checkpoint_s = time.monotonic() - t0
        # every rank plans from the slowest rank's figures, so all agree
        step_s, checkpoint_s = self._slowest(step_s, checkpoint_s)
        # the label-free evaluations: one measured now (the run's first point), the rest and the card's reserved
        if self.label_free is not None and self.label_free.monitor is not None:
            self.label_free(log)
        self.full, self.checkpoint_s = run.plan, checkpoint_s
        self._plan(step_s, f"{step_s:.3f} s/step measured over {CALIBRATION_STEPS - 1} steps")
        self.planned = True
        self.mark = self._mark()
        self.replan_at = run.step + max(10, (run.plan.total_steps - run.step) // 8)
        self.switch_pending = bool(run.cfg.low_res_size)
        # the calibration checkpoint now carries the plan: a resume follows it instead of re-planning
        update_state(run.accelerator, run.output, run.step, run.trainer_state())

    def _slowest(self, *values: float) -> list[float]:
        device = self.run.accelerator.device
        gathered = self.run.accelerator.gather(torch.tensor(values, device=device).view(1, -1))
        return gathered.view(-1, len(values)).max(dim=0).values.tolist()

    def _mark(self) -> tuple[float, float, int]:
        """(now, the seconds spent on evaluations and checkpoints so far, the step)."""
        spent = self.run.clock.spent
        return time.monotonic(), spent["evaluation"] + spent["checkpoints"], self.run.step

    def _replan(self, log) -> None:
        run = self.run
        self.replan_at = None
        _sync(run.accelerator.device)
        t0, aside0, step0 = self.mark
        t1, aside1, step1 = self._mark()
        # 3 % above the measured mean: a step's time drifts up and down by about that over a run (measured on 2
        # cores); an overrun would stop the run before its schedule ends
        (step_s,) = self._slowest(1.03 * ((t1 - t0) - (aside1 - aside0)) / max(step1 - step0, 1))
        before = run.plan.total_steps
        self._plan(step_s, f"re-planned at step {run.step} from {step_s:.3f} s/step over {step1 - step0} steps",
                   replanned_from=before)
        remaining = run.plan.total_steps - run.step
        if not self.switch_pending and not self.late_replan_done and remaining >= 20:
            # once more halfway through what is left, from the steps between: a few steps' time drifts with the
            # machine (measured over a 30-minute run: 2.79 s over the 10 steps after the switch, 2.51 s after)
            self.late_replan_done = True
            self.mark, self.replan_at = self._mark(), run.step + remaining // 2

    def _plan(self, step_s: float, how: str, replanned_from: int | None = None) -> None:
        run, cfg = self.run, self.run.cfg
        if cfg.low_res_size:  # progressive resizing: the remaining steps' mix of low-resolution and full-size steps
            if replanned_from is None:  # calibrated at full size; a low-resolution step taken at the pixel ratio
                self.full_step_s, self.low_step_s = step_s, step_s * (cfg.low_res_size / cfg.image_size) ** 2
            elif run.low_res_end is None:  # measured at the low size
                self.low_step_s = step_s
            else:  # measured at the full size, after the switch
                self.full_step_s = step_s
            total, done = run.plan.total_steps, run.step
            share = 0.0 if run.low_res_end is not None else max(cfg.low_res_fraction * total - done, 0) / max(
                total - done, 1)
            step_s = share * self.low_step_s + (1 - share) * self.full_step_s
        evals_s = 0.0
        if self.label_free is not None and self.label_free.monitor is not None:
            done = len(self.label_free.history)
            evals_s = (max(cfg.label_free_evals + 1 - done, 0) + 2) * self.label_free.seconds
        (evals_s,) = self._slowest(evals_s)
        images_per_step = cfg.batch_size_per_device * cfg.grad_accum_steps
        # one training image = two views forward + backward, about 6 forward passes; evaluation decodes too: x2
        monitor_s = self.monitor_images * step_s / max(images_per_step * 6, 1) * 2
        run.plan = plan_for_budget(self.full, budget_s=self.seconds, elapsed_s=run.wall_s, done_steps=run.step,
                                   step_s=step_s, checkpoint_s=self.checkpoint_s,
                                   checkpoint_every=cfg.checkpoint_every, monitor_s=monitor_s,
                                   epoch_checkpoints=cfg.epoch_checkpoints,
                                   checkpoint_every_s=cfg.checkpoint_every_min * 60,
                                   export_s=estimate_export_s(self.checkpoint_s, cfg.export_onnx) + evals_s)
        budget = run.plan.budget
        if replanned_from is not None:
            budget["replanned_from_steps"] = replanned_from
        logger.info("time budget %.3g min: %s, checkpoint %.2f s; planned %d optimizer steps (%.3g epochs, warmup "
                    "%d) of the config's %d", cfg.time_budget_min, how, self.checkpoint_s, run.plan.total_steps,
                    run.plan.epochs, run.plan.warmup_steps, budget["full_steps"])
        run.record.update(total_steps=run.plan.total_steps, time_budget=budget)
        run.write_record()


def shrink_views(views: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """Progressive resizing: the batch of views at ``size`` (bilinear, antialiased), in the same memory format."""
    out = torch.nn.functional.interpolate(views, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class LoopResult:
    last_loss: float = float("nan")
    skipped: int = 0
    stopped_by_budget: bool = False
    label_free: LabelFreeEvals | None = None


def train_loop(run: Run) -> LoopResult:
    cfg, accelerator, model, optimizer = run.cfg, run.accelerator, run.model, run.optimizer
    device, world, main = accelerator.device, accelerator.num_processes, run.main
    knn = None
    if cfg.knn_monitor and main:
        from training.evaluation.monitor import KnnMonitor

        knn = KnnMonitor(cfg.knn_monitor)
    label_free = LabelFreeEvals(run)
    budget = Budget(run, len(knn) if knn is not None else 0, label_free)
    micro_batches = iter(make_loader(run))
    mean, std = run.model_config.preprocessing.mean, run.model_config.preprocessing.std

    from tqdm.auto import tqdm

    bar = tqdm(total=run.plan.total_steps, initial=run.step, disable=not main, desc=cfg.name, unit="step",
               dynamic_ncols=True)
    result = LoopResult(last_loss=run.last_loss)
    (run.output / "logs").mkdir(parents=True, exist_ok=True)
    t_last, images_since = time.perf_counter(), 0
    metrics_path = run.output / "logs" / "metrics.jsonl"
    with open(metrics_path, "a") if main else nullcontext() as metrics_file:

        def log(record: dict[str, Any]) -> None:
            accelerator.log(record, step=run.step)
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()

        model.train()
        clock = run.clock
        clock.start_up_done()
        while run.step < run.plan.total_steps:
            if budget.deadline_passed():
                logger.warning("time budget of %g min reached at step %d of the planned %d: the plan overran",
                               cfg.time_budget_min, run.step, run.plan.total_steps)
                result.stopped_by_budget = True
                break
            spe = run.plan.steps_per_epoch
            lr_now = run.plan.lr(run.step, run.peak_lr)
            tau = run.plan.tau(run.step, cfg.tau_base, cfg.tau_hold_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            step_loss, z_last = torch.zeros((), device=device), None
            low_res = cfg.low_res_size if run.low_res_now() else 0  # progressive resizing
            for micro in range(cfg.grad_accum_steps):
                with clock.section("data"):
                    batch = next(micro_batches)
                    if cfg.augment_backend == "device":  # decode + augment here, on the training device
                        v1, v2, skipped = device_views(batch, device, run.dataset.augment, mean, std,
                                                       cfg.channels_last)
                    else:
                        v1, v2, skipped = batch
                        v1 = to_device_views(v1, device, mean, std, cfg.channels_last)
                        v2 = to_device_views(v2, device, mean, std, cfg.channels_last)
                    if low_res:
                        v1, v2 = shrink_views(v1, low_res, cfg.channels_last), shrink_views(v2, low_res,
                                                                                            cfg.channels_last)
                result.skipped += skipped
                last_micro = micro == cfg.grad_accum_steps - 1
                with clock.section("steps"):
                    with (nullcontext() if last_micro else accelerator.no_sync(model)), accelerator.autocast():
                        loss, z_last = model(v1, v2)
                        accelerator.backward(loss / cfg.grad_accum_steps)
                    step_loss += loss.detach().float() / cfg.grad_accum_steps  # stays on the device: no sync here
                images_since += v1.shape[0] * world
            with clock.section("steps"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                run.byol.update_target(tau)  # once per optimizer step, on the unwrapped model
            run.step += 1
            bar.update(1)
            budget.after_step(log)
            if bar.total != run.plan.total_steps:
                bar.total = run.plan.total_steps
                bar.refresh()
            if run.step % cfg.log_every == 0 or run.step == run.plan.total_steps:
                result.last_loss = float(accelerator.reduce(step_loss, reduction="mean"))  # the mean over ranks
                run.last_loss = result.last_loss
                now = time.perf_counter()
                record = {"step": run.step, "epoch": run.step / spe, "loss": result.last_loss, "lr": lr_now,
                          "tau": tau, "images_per_s": images_since / max(now - t_last, 1e-9),
                          "projection_std": projection_std(z_last) if z_last is not None else float("nan"),
                          "skipped_images": result.skipped}
                t_last, images_since = now, 0
                log(record)
                bar.set_postfix(loss=f"{result.last_loss:.3f}", ips=f"{record['images_per_s']:.1f}")
            knn_now = knn is not None and (run.step % spe == 0 or run.step == run.plan.total_steps)
            if knn_now:
                with clock.section("evaluation"), accelerator.autocast():
                    top1 = knn(run.byol.online.backbone)
                log({"step": run.step, "epoch": run.step / spe, "knn_top1": top1})
                logger.info("epoch %.3g: kNN top-1 %.2f%% on %s", run.step / spe, top1, cfg.knn_monitor)
            measured_now = bool(label_free.history) and label_free.history[-1]["step"] == run.step
            if label_free.monitor is not None and not measured_now and (label_free.due() or knn_now):
                label_free(log)  # where kNN is measured, RankMe is too: the two can be compared step by step
            if run.checkpoint_due():
                run.save()
    bar.close()
    result.label_free = label_free
    if result.skipped:
        logger.warning("%d unreadable images were skipped", result.skipped)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: publish


def publish(run: Run, result: LoopResult, name: str, budget: dict[str, Any] | None = None) -> Path:
    """Save the online backbone as a hub model folder with its card."""
    cfg, record = run.cfg, run.record
    encoder = online_encoder(run, name)
    selected = None
    if cfg.keep_best and run.best is not None:
        best = BYOLModel.from_pretrained(run.output / BEST_DIR)
        encoder.load_state_dict(best.state_dict(), strict=True)
        last = result.label_free.history[-1] if result.label_free and result.label_free.history else {}
        selected = {"by": cfg.keep_best, **run.best, "last_step": run.step, "last_rankme": last.get("rankme")}
        logger.info("keep_best %s: publishing step %d (RankMe %.1f), not the last step %d (RankMe %s)",
                    cfg.keep_best, run.best["step"], run.best["rankme"], run.step, last.get("rankme"))
    encoder.config.demo = cfg.demo
    encoder.config.provenance = {"identity": f"Trained by this project's BYOL trainer (config `{cfg.name}`).",
                                 "git_commit": record["git_commit"], "package_versions": record["versions"]}
    encoder.config.training = {"config_name": cfg.name, "epochs": run.step / run.plan.steps_per_epoch,
                               "optimizer_steps": run.step, "dataset": cfg.dataset_name, "data": record["data"],
                               "dataset_size": record["dataset_size"], "final_loss": round(result.last_loss, 5),
                               "optimizer_batch": record["optimizer_batch"], "lr": record["lr"],
                               "precision": record["precision"], "world_size": record["world_size"],
                               "skipped_images": result.skipped, "resolved_config": cfg.to_dict()}
    if budget:
        encoder.config.training["time_budget"] = budget
    if selected:
        encoder.config.training["selected"] = selected
    monitor = result.label_free.monitor if result.label_free else None
    if monitor is not None:  # every layer's label-free figures on the held-out sample, in the card
        with run.accelerator.autocast():  # on the training device (a GPU's run measures there), then back
            layers = monitor.every_layer(encoder.to(run.accelerator.device))
        encoder.cpu()
        encoder.config.training["label_free"] = {
            "held_out_images": len(monitor), "layers": layers, "history": result.label_free.history,
            "note": "RankMe and the std of the L2-normalized outputs (global average pooled per layer) on training "
                    "images held out of training; no labels used"}
    folder = encoder.save_pretrained(run.output / "final", onnx=cfg.export_onnx, transformers=cfg.export_transformers)
    logger.info("published the online encoder to %s (final loss %.4f)", folder, result.last_loss)
    return folder


def train(args: argparse.Namespace, started: float | None = None) -> Path | None:
    run = build_run(args, started)
    if run.main:
        run.accelerator.init_trackers("byol", config={k: v for k, v in run.cfg.to_dict().items()
                                                      if isinstance(v, (int, float, str, bool))})
    result = train_loop(run)
    final = None
    if run.dry_run:
        logger.info("dry run: one optimizer step done, loss %.4f; config %s validates", result.last_loss, run.cfg.name)
    else:
        run.save()
        if run.main:
            budget = run.budget_outcome(result.stopped_by_budget)
            with run.clock.section("publish"):
                final = publish(run, result, args.model_name or run.output.name, budget)
            if budget:
                run.record["time_budget"] = budget
                logger.info("time budget %.3g min: %d of %d planned steps done in %.2f min", run.cfg.time_budget_min,
                            run.step, run.plan.total_steps, budget["wall_min"])
            run.record["wall_time"] = run.clock.report(run.budget_spent_s)
            run.write_record()
            logger.info("%s", run.clock.line(run.record["wall_time"]))
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return final


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args, started)
    except (ConfigError, DataError) as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["STATE_FILE", "build_parser", "main", "publish", "train"]

if __name__ == "__main__":
    sys.exit(main(started=PROCESS_START))
