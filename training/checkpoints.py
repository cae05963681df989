"""A run's resumable state: atomic checkpoints, finding the one to resume from, and refusing a resume that
would change the method.

    runs/x/config.yaml                       the resolved config and the run record
    runs/x/checkpoints/step_N/               Accelerate's save_state + trainer_state.json (written last)
    runs/x/checkpoints/.tmp_step_N/          a checkpoint being written (ignored; replaced on the next save)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from hub.errors import ConfigError

STATE_FILE = "trainer_state.json"
RUN_RECORD = "config.yaml"
# Fields that change how a run is operated, not what it computes: a resume may change them.
OPERATIONAL_FIELDS = frozenset({
    "name", "num_workers", "log_every", "checkpoint_every", "keep_checkpoints", "knn_monitor", "export_onnx", "demo",
    "channels_last", "fuse_views", "mixed_precision", "cpu_precision", "time_budget_min", "dataset_name",
    "export_transformers", "epoch_checkpoints", "checkpoint_every_min", "decode_cache_mb", "label_free_sample",
    "label_free_evals", "keep_best",
})


class ResumeError(ConfigError):
    """``--resume`` points at nothing resumable, or at a run whose method differs from this one's."""


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / STATE_FILE).is_file()


def latest_checkpoint(run_folder: Path) -> Path | None:
    """The newest complete checkpoint of a run folder (one whose trainer state was written last)."""
    done = [p for p in (run_folder / "checkpoints").glob("step_*") if is_complete(p)]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def find_resume_checkpoint(resume: str, output: Path) -> Path:
    """The checkpoint ``--resume`` means: ``auto`` (no value) is the newest complete one in ``output``; a run
    folder gives its newest complete one; a checkpoint folder is taken as it is. Anything else is an error."""
    path = output if resume == "auto" else Path(resume)
    if not path.exists():
        raise ResumeError(f"--resume {path}: no such folder; give a run folder (with checkpoints/) or a checkpoint "
                          "folder (checkpoints/step_N)")
    if is_complete(path):
        return path
    if (path / "checkpoints").is_dir() or (path / RUN_RECORD).is_file():
        found = latest_checkpoint(path)
        if found is None:
            partial = sorted(p.name for p in (path / "checkpoints").glob("*")) if (path / "checkpoints").is_dir() else []
            raise ResumeError(f"--resume {path}: the run folder has no complete checkpoint "
                              f"(found {partial or 'none'}; a complete one holds {STATE_FILE}); start without --resume")
        return found
    if path.name.startswith(("step_", ".tmp_step_")):
        raise ResumeError(f"--resume {path}: this checkpoint is incomplete (no {STATE_FILE}: it was interrupted "
                          "while being written); resume from the run folder to take the newest complete one")
    raise ResumeError(f"--resume {path}: neither a run folder (config.yaml, checkpoints/) nor a checkpoint folder "
                      f"(with {STATE_FILE})")


def run_folder_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def check_same_method(checkpoint: Path, config: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse a resume whose config differs from the checkpointed run's in a field that changes the method."""
    saved_path = run_folder_of(checkpoint) / RUN_RECORD
    if not saved_path.is_file():
        return  # a checkpoint copied without its run record: nothing to compare against
    saved = yaml.safe_load(saved_path.read_text()) or {}
    before = saved.get("config", {})
    diffs = [f"{key}: {before[key]!r} -> {config[key]!r}" for key in sorted(config)
             if key in before and key not in OPERATIONAL_FIELDS and before[key] != config[key]]
    for key in ("optimizer_batch", "dataset_size"):
        if key in saved and saved[key] != record[key]:
            diffs.append(f"{key}: {saved[key]!r} -> {record[key]!r}")
    if diffs:
        raise ResumeError(f"--resume {checkpoint}: this run's config differs from the checkpointed run's in fields "
                          f"that change the method ({'; '.join(diffs)}); resume with the same config, or start a new "
                          "run folder")


def update_state(accelerator: Any, output: Path, step: int, trainer_state: dict[str, Any]) -> None:
    """Rewrite the trainer state of the complete checkpoint ``step_N`` (atomically; main process)."""
    if accelerator.is_main_process:
        from storage.files import atomic_write_text

        atomic_write_text(output / "checkpoints" / f"step_{step}" / STATE_FILE,
                          json.dumps({"step": step, **trainer_state}))
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Any, output: Path, step: int, keep: int, trainer_state: dict[str, Any]) -> None:
    """``save_state`` into a temporary folder, write the trainer state last, rename: a kill at any moment
    leaves the previous complete checkpoint intact."""
    root = output / "checkpoints"
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted((p for p in root.glob("step_*") if is_complete(p)), key=lambda p: int(p.name.split("_")[1]))
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
