"""CPU precision follows the hardware; a time budget plans the whole schedule; the plan survives a resume."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest
import yaml

from hub import hardware
from tests.support.training import run
from training import pretrain
from training.precision import resolve_precision
from training.schedule_plan import StepPlan, plan_for_budget


@pytest.mark.parametrize("native, asked, cpu, expected", [
    (False, "fp16", "auto", "no"),    # AVX2-only: bf16 autocast measured 7x slower than fp32
    (True, "fp16", "auto", "bf16"),
    (False, "fp16", "no", "no"),
    (True, "fp16", "no", "no"),
    (False, "fp16", "bf16", "bf16"),  # explicit: honoured, with a warning
    (False, "bf16", "auto", "bf16"),
    (True, "no", "auto", "no"),
])
def test_cpu_precision_follows_the_hardware(monkeypatch, caplog, native, asked, cpu, expected):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="training.precision"):
        precision, reason = resolve_precision(asked, cpu, "cpu")
    assert precision == expected
    warned = "expected to run about 7x slower than fp32" in caplog.text
    assert warned == (expected == "bf16" and not native)
    if cpu == "auto" and asked == "fp16":
        assert reason == f"cpu_precision auto: this CPU has {'native' if native else 'no native'} bf16"
    assert resolve_precision(asked, cpu, "cuda")[0] == asked  # GPUs take the config as it is


def test_cpu_summary_names_the_flags_benchmarks_print():
    line = hardware.cpu_summary()
    assert "avx512_bf16" in line and "native bf16" in line and "vnni" in line


def test_budget_plan_fits_warmup_cosine_and_tau_inside_the_budget():
    full = StepPlan(steps_per_epoch=15, total_steps=900, warmup_steps=30)
    plan = plan_for_budget(full, budget_s=480, elapsed_s=12, done_steps=4, step_s=1.2, checkpoint_s=0.3,
                           checkpoint_every=100_000, monitor_s=2.0, export_s=3.0)
    steps = plan.total_steps
    epoch_ends = steps // 15
    spent = 12 + (steps - 4) * 1.2 + epoch_ends * (0.3 + 2.0) + 3.0
    assert spent <= 480 and spent + 1.2 + 2.3 > 480 - 1.2  # fills the budget, does not overrun it
    assert plan.warmup_steps == round(30 / 900 * steps)     # warmup keeps its fraction
    assert plan.lr(steps - 1, 1.0) < 0.01 and plan.tau(steps, 0.99, 0.05) == 1.0  # the schedule ends
    assert plan.budget["planned_steps"] == steps and not plan.budget["fits_full_schedule"]
    roomy = plan_for_budget(full, budget_s=10_000, elapsed_s=0, done_steps=4, step_s=1.0, checkpoint_s=0,
                            checkpoint_every=100_000, monitor_s=0, export_s=0)
    assert roomy.total_steps == 900 and roomy.budget["fits_full_schedule"]


def test_budgeted_run_ends_its_schedule_in_time_and_resume_keeps_the_plan(tmp_path, photo_dir):
    out = tmp_path / "budget"
    args = ["--config", "smoke", "--data", str(photo_dir), "--output", str(out), "--batch-size-per-device", "4",
            "--total-batch-size", "8", "--num-workers", "0", "--no-export-onnx", "--no-export-transformers",
            "--epochs", "500", "--time-budget-min", "0.25", "--log-every", "1"]
    start = time.monotonic()
    proc = run(args, launcher=[sys.executable])
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the budget counts the whole process, imports included: only the interpreter's own start is outside it
    assert wall < 0.25 * 60 + 4, f"{wall:.1f} s for a 15 s budget"
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    record = yaml.safe_load((out / "config.yaml").read_text())
    planned = record["time_budget"]["planned_steps"]
    assert 4 < planned < 1000 and metrics[-1]["step"] == planned == record["total_steps"]
    peak = max(m["lr"] for m in metrics)
    assert metrics[-1]["lr"] < 0.1 * peak and metrics[-1]["tau"] > 0.999  # not left mid-schedule
    card = (out / "final" / "README.md").read_text()
    assert f"planned to {planned} optimizer steps" in card
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["training"]["time_budget"]["done_steps"] == planned
    state = json.loads(sorted((out / "checkpoints").glob("step_*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["plan"]["total_steps"] == planned

    resumed = run([*args, "--resume", str(out)], launcher=[sys.executable])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {planned} of {planned}" in resumed.stderr and "measured over" not in resumed.stderr  # no re-plan
    resumed_config = json.loads((out / "final" / "config.json").read_text())
    assert resumed_config["training"]["final_loss"] == config["training"]["final_loss"]  # kept, not NaN


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, photo_dir):
    out = tmp_path_factory.mktemp("resume") / "run"
    common = ["--config", "smoke", "--data", str(photo_dir), "--batch-size-per-device", "4", "--total-batch-size", "8",
              "--num-workers", "0", "--no-export-onnx", "--no-export-transformers"]
    assert pretrain.main([*common, "--output", str(out)]) == 0  # in this process: no interpreter start-up
    return out, common


@pytest.mark.parametrize("how", ["run-folder", "checkpoint-folder", "no-value"])
def test_resume_accepts_a_run_folder_a_checkpoint_or_no_value(finished_run, tmp_path, how, caplog):
    out, common = finished_run
    target = {"run-folder": [str(out)], "checkpoint-folder": [str(out / "checkpoints" / "step_4")],
              "no-value": []}[how]
    caplog.set_level(logging.INFO, logger="training.pretrain")
    assert pretrain.main([*common, "--output", str(out), "--resume", *target]) == 0
    assert f"resumed from {out / 'checkpoints' / 'step_4'} at step 4" in caplog.text


@pytest.mark.parametrize("case, message", [
    ("empty-run", "the run folder has no complete checkpoint"),
    ("neither", "neither a run folder"),
    ("missing", "no such folder"),
    ("other-method", "differs from the checkpointed run's in fields that change the method (base_lr: 0.3 -> 0.5)"),
])
def test_resume_refuses_what_it_cannot_continue(finished_run, tmp_path, case, message, capsys):
    out, common = finished_run
    extra = []
    if case == "empty-run":
        (tmp_path / "empty" / "checkpoints" / ".tmp_step_2").mkdir(parents=True)
        target = tmp_path / "empty"
    elif case == "neither":
        (tmp_path / "stuff").mkdir()
        target = tmp_path / "stuff"
    elif case == "missing":
        target = tmp_path / "nope"
    else:
        target, extra = out, ["--base-lr", "0.5"]
    assert pretrain.main([*common, "--output", str(tmp_path / "o"), "--resume", str(target), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err[-2000:]


def test_device_data_backend_trains_and_publishes(tmp_path, photo_dir):
    """The `device` backend (decode + views as tensor ops on the training device) runs the same loop on CPU."""
    out = tmp_path / "device"
    # a process of its own: its DataLoader worker is forked (never fork a test process with threads running)
    proc = run(["--config", "smoke", "--data", str(photo_dir), "--output", str(out), "--batch-size-per-device", "4",
                "--total-batch-size", "8", "--num-workers", "1", "--no-export-onnx", "--no-export-transformers",
                "--augment-backend", "device"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 4 and metrics[-1]["skipped_images"] >= 1  # photo_dir holds one corrupt file
    assert (out / "final" / "model.safetensors").exists()
