"""BYOL pretraining with Accelerate, from one CPU to many GPUs.

    accelerate launch training/pretrain.py --config byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200 \\
        --data /data/imagenet/train --output runs/byol-r50-ep200
    accelerate launch --cpu training/pretrain.py --config smoke --data photos/ --output runs/smoke
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 training/pretrain.py --config smoke ...
    accelerate launch training/pretrain.py --config ... --output runs/x --resume     # continue

Run folder: OUTPUT/config.yaml (resolved config + reproducibility record), OUTPUT/checkpoints/step_N/
(complete checkpoints only; written under a temporary name and renamed), OUTPUT/logs/ (TensorBoard and
metrics.jsonl), OUTPUT/final/ (a hub model folder: BYOLModel.from_pretrained / byol-hub push work on it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (accelerate launch training/pretrain.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from hub import BYOLModel, ModelConfig, PreprocessConfig
from hub.provenance import git_commit, package_versions
from training.augment import AugmentConfig, ViewParams
from training.byol import BYOL, projection_std
from training.config import ConfigError, TrainConfig, add_config_arguments, resolve_config
from training.data import (
    DataError,
    ResumableSampler,
    TwoViewDataset,
    collate_views,
    open_source,
    steps_per_epoch,
    to_device_views,
)
from training.lars import LARS, lars_param_groups
from training.schedules import lr_at, tau_at

logger = logging.getLogger("training.pretrain")
STATE_FILE = "trainer_state.json"


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one with its trainer state written last)."""
    done = [p for p in (output / "checkpoints").glob("step_*") if (p / STATE_FILE).exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name in training/configs/ (e.g. smoke, "
                        "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200) or a .yaml path")
    parser.add_argument("--data", required=True, help="folder of images (recursive), .txt list of paths, or .tar shards")
    parser.add_argument("--output", required=True, help="run folder (config.yaml, checkpoints/, logs/, final/)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from the newest complete checkpoint in OUTPUT (or the given checkpoint folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build everything, run one optimizer step on one micro-batch, print timings, exit")
    parser.add_argument("--model-name", default=None, help="model id recorded in the final card (default: run folder name)")
    add_config_arguments(parser)
    return parser


def make_accelerator(cfg: TrainConfig, output: Path):
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration
    from accelerate.utils.environment import parse_flag_from_env

    # PartialState does not read ACCELERATE_USE_CPU itself (Accelerator does): without it, torchrun on a
    # machine with no GPU would give N independent single-process runs instead of N MULTI_CPU ranks.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    precision = cfg.mixed_precision
    if state.device.type == "cpu" and precision == "fp16":
        precision = cfg.cpu_precision  # fp16 autocast is not what Accelerate does on CPU: map it explicitly
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=str(output),
                                                                  logging_dir=str(output / "logs")))
    return accelerator, precision


def train(args: argparse.Namespace) -> Path | None:
    cfg = resolve_config(args.config, args)
    output = Path(args.output)
    accelerator, precision = make_accelerator(cfg, output)
    main = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if main else logging.WARNING,
                        format=f"%(asctime)s [rank {accelerator.process_index}] %(levelname)s %(message)s")
    device, world = accelerator.device, accelerator.num_processes
    logger.info("%s on %s x %d (%s), precision %s (config asked %s)", cfg.name, device.type, world,
                accelerator.distributed_type, precision, cfg.mixed_precision)

    # ---- data
    source = open_source(args.data)
    augment = AugmentConfig(size=cfg.image_size, scale=(cfg.crop_scale_min, 1.0),
                            view1=ViewParams(cfg.blur_probs[0], cfg.solarize_probs[0]),
                            view2=ViewParams(cfg.blur_probs[1], cfg.solarize_probs[1]))
    dataset = TwoViewDataset(source, augment, cfg.seed)
    batch, accum = cfg.batch_size_per_device, cfg.grad_accum_steps
    if args.dry_run:
        accum = 1
        if len(dataset) < batch * world:
            raise DataError(f"--dry-run needs {batch * world} images for one micro-batch; {len(dataset)} found")
        spe = 1
    else:
        spe = steps_per_epoch(len(dataset), world, batch, accum)
    actual_batch = world * batch * accum
    lr = cfg.base_lr * actual_batch / 256
    if actual_batch != cfg.total_batch_size:
        logger.warning("optimizer batch is %d x %d x %d = %d, not the config's %d: lr scaled linearly to "
                       "base_lr %.3g x %d / 256 = %.4g", world, batch, accum, actual_batch, cfg.total_batch_size,
                       cfg.base_lr, actual_batch, lr)
    total_steps = 1 if args.dry_run else spe * cfg.epochs
    if cfg.max_steps and not args.dry_run:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = int(round(cfg.warmup_epochs * spe))

    # ---- model and optimizer
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    model_config = ModelConfig(architecture=cfg.architecture, stem=cfg.stem,
                               preprocessing=PreprocessConfig(resize_size=cfg.eval_resize, crop_size=cfg.image_size),
                               datasets=[cfg.dataset_name])
    sync = world > 1 and cfg.sync_bn and device.type == "cuda"
    # SyncBatchNorm replaces the per-view BatchNorm: then views must go through one at a time
    fuse = cfg.fuse_views and not sync and (device.type != "cpu" or precision != "no")
    model = BYOL(model_config, cfg.projector_hidden, cfg.projector_out, cfg.predictor_hidden, fuse_views=fuse)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        logger.info("SyncBatchNorm across %d GPU processes", world)
    elif world > 1 and cfg.sync_bn:
        logger.warning("SyncBatchNorm runs only on CUDA: %d CPU processes use per-process BatchNorm", world)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = LARS(lars_param_groups([model.online, model.predictor]), lr=lr, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
    model, optimizer = accelerator.prepare(model, optimizer)
    byol = accelerator.unwrap_model(model)

    # ---- resume
    step = 0
    if args.resume:
        ckpt = latest_checkpoint(output) if args.resume == "auto" else Path(args.resume)
        if ckpt is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output / "checkpoints")
        else:
            accelerator.load_state(str(ckpt))
            step = json.loads((ckpt / STATE_FILE).read_text())["step"]
            logger.info("resumed from %s at step %d", ckpt, step)

    run_record = {"config": cfg.to_dict(), "data": str(args.data), "dataset_size": len(dataset), "world_size": world,
                  "optimizer_batch": actual_batch, "lr": lr, "precision": precision, "steps_per_epoch": spe,
                  "total_steps": total_steps, "git_commit": git_commit(), "versions": package_versions()}
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(yaml.safe_dump(run_record, sort_keys=False))
        accelerator.init_trackers("byol", config={k: v for k, v in cfg.to_dict().items()
                                                  if isinstance(v, (int, float, str, bool))})

    sampler = ResumableSampler(len(dataset), spe * accum * batch, accelerator.process_index, world, cfg.seed,
                               start_epoch=step // spe, start=(step % spe) * accum * batch,
                               end_epoch=math.ceil(total_steps / spe))
    knn = KnnMonitor(cfg.knn_monitor) if cfg.knn_monitor and main else None
    workers = cfg.num_workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         collate_fn=collate_views, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0, drop_last=True,
                                         prefetch_factor=4 if workers > 0 else None)
    micro_batches = iter(loader)
    mean, std = model_config.preprocessing.mean, model_config.preprocessing.std

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not main, desc=cfg.name, unit="step", dynamic_ncols=True)
    if main:
        (output / "logs").mkdir(parents=True, exist_ok=True)
    metrics_file = open(output / "logs" / "metrics.jsonl", "a") if main else None  # noqa: SIM115
    skipped_total, last_loss, t_last, images_since = 0, float("nan"), time.perf_counter(), 0
    model.train()
    budget_end = time.monotonic() + cfg.time_budget_min * 60 if cfg.time_budget_min else None
    while step < total_steps:
        if budget_end is not None and accelerator.gather(torch.tensor(float(time.monotonic() >= budget_end),
                                                                        device=device)).max() > 0:
            logger.info("time budget of %g min reached at step %d", cfg.time_budget_min, step)
            break
        lr_now = lr_at(step, peak_lr=lr, warmup_steps=warmup_steps, total_steps=total_steps)
        tau = tau_at(step, tau_base=cfg.tau_base, total_steps=total_steps, hold_fraction=cfg.tau_hold_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        step_loss, z_last = torch.zeros((), device=device), None
        for micro in range(accum):
            v1, v2, skipped = next(micro_batches)
            skipped_total += skipped
            v1 = to_device_views(v1, device, mean, std, cfg.channels_last)
            v2 = to_device_views(v2, device, mean, std, cfg.channels_last)
            sync = micro == accum - 1
            with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss, z_last = model(v1, v2)
                accelerator.backward(loss / accum)
            step_loss += loss.detach().float() / accum  # stays on the device: no sync per micro-batch
            images_since += v1.shape[0] * world
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        byol.update_target(tau)  # once per optimizer step, on the unwrapped model
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            last_loss = float(accelerator.reduce(step_loss, reduction="mean"))  # the mean over ranks
            now = time.perf_counter()
            record = {"step": step, "epoch": step / spe, "loss": last_loss, "lr": lr_now, "tau": tau,
                      "images_per_s": images_since / max(now - t_last, 1e-9),
                      "projection_std": projection_std(z_last) if z_last is not None else float("nan"),
                      "skipped_images": skipped_total}
            t_last, images_since = now, 0
            accelerator.log(record, step=step)
            if main:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.set_postfix(loss=f"{last_loss:.3f}", ips=f"{record['images_per_s']:.1f}")
        if knn is not None and (step % spe == 0 or step == total_steps):
            with accelerator.autocast():
                top1 = knn(byol.online.backbone)
            accelerator.log({"knn_top1": top1, "epoch": step / spe}, step=step)
            metrics_file.write(json.dumps({"step": step, "epoch": step / spe, "knn_top1": top1}) + "\n")
            logger.info("epoch %.0f: kNN top-1 %.2f%% on %s", step / spe, top1, cfg.knn_monitor)
        if not args.dry_run and (step % cfg.checkpoint_every == 0 or step % spe == 0) and step < total_steps:
            save_checkpoint(accelerator, output, step, cfg.keep_checkpoints)
    bar.close()
    if skipped_total:
        logger.warning("%d unreadable images were skipped", skipped_total)
    if args.dry_run:
        logger.info("dry run: one optimizer step done, loss %.4f; config %s validates", last_loss, cfg.name)
        accelerator.end_training()
        return None
    save_checkpoint(accelerator, output, step, cfg.keep_checkpoints)
    final = None
    if main:
        final = publish(byol, model_config, cfg, run_record, output, last_loss, step, skipped_total,
                        args.model_name or output.name)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if metrics_file:
        metrics_file.close()
    return final


class KnnMonitor:
    """Weighted kNN (k=20, T=0.07) of the online encoder on a labeled folder (train/ and val/ ImageFolders)."""

    def __init__(self, folder: str) -> None:
        from training.evaluation.data import image_folder

        self.train, self.val = image_folder(Path(folder) / "train"), image_folder(Path(folder) / "val")

    def __call__(self, backbone: BYOLModel) -> float:
        from training.evaluation.features import features_of
        from training.evaluation.knn import weighted_knn

        was_training = backbone.training
        backbone.eval()
        try:
            train = features_of(backbone, self.train.paths, ("avgpool",), "gap")["avgpool"]
            val = features_of(backbone, self.val.paths, ("avgpool",), "gap")["avgpool"]
        finally:
            backbone.train(was_training)
        return weighted_knn(train, self.train.labels, val, self.val.labels, ks=(20,))[20]


def save_checkpoint(accelerator, output: Path, step: int, keep: int) -> None:
    """``save_state`` into a temporary folder, write the trainer state last, rename: a kill at any
    moment leaves the previous complete checkpoint intact."""
    root = output / "checkpoints"
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted((p for p in root.glob("step_*") if (p / STATE_FILE).exists()),
                          key=lambda p: int(p.name.split("_")[1]))
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def publish(byol: BYOL, model_config: ModelConfig, cfg: TrainConfig, run_record: dict[str, Any], output: Path,
            final_loss: float, step: int, skipped: int, name: str) -> Path:
    """Save the online backbone as a hub model folder with its card."""
    encoder = BYOLModel(ModelConfig.from_dict(model_config.to_dict()))
    state = {k: v.detach().float().contiguous() for k, v in byol.online.backbone.state_dict().items()}
    encoder.load_state_dict(state, strict=True)
    encoder.config.name = name
    encoder.config.demo = cfg.demo
    encoder.config.provenance = {"identity": f"Trained by this project's BYOL trainer (config `{cfg.name}`).",
                                 "git_commit": run_record["git_commit"], "package_versions": run_record["versions"]}
    encoder.config.training = {"config_name": cfg.name, "epochs": step / run_record["steps_per_epoch"],
                               "optimizer_steps": step, "dataset": cfg.dataset_name, "data": run_record["data"],
                               "dataset_size": run_record["dataset_size"], "final_loss": round(final_loss, 5),
                               "optimizer_batch": run_record["optimizer_batch"], "lr": run_record["lr"],
                               "precision": run_record["precision"], "world_size": run_record["world_size"],
                               "skipped_images": skipped, "resolved_config": cfg.to_dict()}
    folder = encoder.save_pretrained(output / "final", onnx=cfg.export_onnx)
    logger.info("published the online encoder to %s (final loss %.4f)", folder, final_loss)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (ConfigError, DataError) as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
