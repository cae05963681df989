"""End-to-end pretraining on real photos, through the real launchers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file

from hub import BYOLModel
from hub.hardware import native_bf16
from tests.support.training import ACCELERATE, SCRIPT, SMALL, run
from training import pretrain
from training.config import TrainConfig


def test_smoke_pretraining_publishes_a_loadable_model(tmp_path, photo_dir):
    out = tmp_path / "run"
    proc = run(["--config", "smoke", "--data", str(photo_dir), "--output", str(out), *SMALL], launcher=ACCELERATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.yaml").exists() and list((out / "logs").rglob("events.out.tfevents*"))
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 4  # 19 files (1 corrupt) at 8 per step: 2 steps per epoch, 2 epochs
    assert all({"loss", "lr", "tau", "images_per_s", "projection_std", "skipped_images"} <= set(m) for m in metrics)
    model = BYOLModel.from_pretrained(out / "final")
    assert model.config.architecture == "resnet18" and model.config.training["config_name"] == "smoke"
    assert model.config.training["final_loss"] == pytest.approx(metrics[-1]["loss"], abs=1e-4)
    assert (out / "final" / "model.onnx").exists()
    card = (out / "final" / "README.md").read_text()
    assert "smoke" in card and "final_loss" in card
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]  # epoch ends, 2 kept


def test_knn_monitor_logs_at_epoch_ends(tmp_path, photo_dir):
    labeled = tmp_path / "labeled"
    for split in ("train", "val"):
        for cls in ("class0", "class1"):
            (labeled / split / cls).mkdir(parents=True)
            for i, path in enumerate(sorted((photo_dir / cls).glob("*"))):
                if path.name != "broken.jpg" and (i % 2 == 0) == (split == "train"):
                    (labeled / split / cls / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "knn"
    assert pretrain.main(["--config", "smoke", "--data", str(photo_dir), "--output", str(out), *SMALL,
                          "--no-export-onnx", "--knn-monitor", str(labeled)]) == 0
    knn = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines() if "knn_top1" in line]
    assert [r["step"] for r in knn] == [2, 4] and all(0 <= r["knn_top1"] <= 100 for r in knn)


def test_two_cpu_ranks_under_torchrun(tmp_path, photos):
    """Two ranks with the label-free monitor on (a folder large enough to hold a sample out) and --keep-best: the
    ranks hold out the same images, only the main process evaluates and saves, and none waits forever."""
    import numpy as np

    data, rng = tmp_path / "crops", np.random.default_rng(0)
    data.mkdir()
    for i in range(170):  # a tenth (17) is held out
        img = photos[i % len(photos)]
        side = int(rng.uniform(0.3, 0.7) * min(img.size))
        x, y = int(rng.integers(0, img.width - side)), int(rng.integers(0, img.height - side))
        img.crop((x, y, x + side, y + side)).resize((72, 72)).save(data / f"{i}.jpg", quality=85)
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = run(["--config", "smoke", "--data", str(data), "--output", str(out), "--batch-size-per-device", "2",
                "--total-batch-size", "8", "--num-workers", "0", "--no-export-onnx", "--max-steps", "6",
                "--label-free-evals", "2", "--keep-best", "rankme"], launcher=launcher,
               env={"ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 0]" in proc.stderr and "[rank 1]" in proc.stderr
    assert "cpu x 2 (DistributedType.MULTI_CPU)" in proc.stderr
    record = (out / "config.yaml").read_text()
    assert "world_size: 2" in record and "optimizer_batch: 8" in record
    assert "label_free_held_out: 17" in record and "dataset_size: 153" in record
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    ranks = [m for m in metrics if "rankme" in m]
    assert len(ranks) >= 2 and ranks[-1]["step"] == 6 and len({m["step"] for m in ranks}) == len(ranks)
    final, best = BYOLModel.from_pretrained(out / "final"), BYOLModel.from_pretrained(out / "best")
    trough = min(range(len(ranks)), key=lambda i: ranks[i]["rankme"])
    chosen = max(ranks[trough:], key=lambda m: m["rankme"])  # the highest after the lowest
    assert final.config.training["selected"]["step"] == chosen["step"]
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in final.state_dict().items())


def _data_on(kind: str, photo_dir, tmp_path, request) -> tuple[str, list[str], dict]:
    """The photos as ``--data``: the folder itself, Parquet with the image bytes inside (written by the datasets
    library) on S3, or WebDataset tars on S3 named by a brace range; with the options and environment to reach it."""
    if kind == "folder":
        return str(photo_dir), [], {}
    s3 = request.getfixturevalue("s3")
    files = sorted(p for p in photo_dir.rglob("*") if p.suffix in (".jpg", ".png"))
    prefix = f"bkt/train-{kind}-{tmp_path.name}"
    if kind == "parquet-s3":
        datasets = pytest.importorskip("datasets")
        local = tmp_path / "train.parquet"
        table = {"image": [{"bytes": p.read_bytes(), "path": None} for p in files], "label": [0] * len(files)}
        datasets.Dataset.from_dict(table).cast_column("image", datasets.Image()).to_parquet(str(local))
        s3.fs.pipe_file(f"{prefix}/train-00000.parquet", local.read_bytes())
        data = f"s3://{prefix}/"
    else:
        import io
        import tarfile

        for shard in range(2):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for i, path in enumerate(files[shard::2]):
                    info = tarfile.TarInfo(f"{i:04d}{path.suffix}")
                    info.size = path.stat().st_size
                    tar.addfile(info, io.BytesIO(path.read_bytes()))
            s3.fs.pipe_file(f"{prefix}/shard-{shard:03d}.tar", buf.getvalue())
        data = f"s3://{prefix}/shard-{{000..001}}.tar"
    return data, s3.option, s3.env()


@pytest.mark.parametrize("kind", ["folder", "parquet-s3", "tars-s3"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, photo_dir, kind, request, caplog):
    data, options, env = _data_on(kind, photo_dir, tmp_path, request)
    common = ["--config", "smoke", "--data", data, *options, *SMALL, "--epochs", "3", "--checkpoint-every", "2",
              "--no-export-onnx", "--seed", "7"]
    ref = tmp_path / "uninterrupted"
    assert pretrain.main([*common, "--output", str(ref)]) == 0  # in this process: no second interpreter start-up

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, SCRIPT, *common, "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **env})
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step_2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()

    caplog.set_level(logging.INFO, logger="training.pretrain")
    assert pretrain.main([*common, "--output", str(out), "--resume", str(out)]) == 0  # the run folder, as users pass it
    assert "resumed from" in caplog.text
    a = load_file(ref / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["training"]["optimizer_steps"] == 6
    if kind != "folder":  # the URL is recorded; the endpoint and credentials never are
        assert config["training"]["data"] == data
        written = "".join(p.read_text(errors="replace") for p in (out / "final").glob("*.json")) + \
            (out / "config.yaml").read_text() + (out / "final" / "README.md").read_text()
        assert "endpoint_url" not in written and env["AWS_SECRET_ACCESS_KEY"] not in written


def test_imagenet_config_validates_with_a_dry_run(tmp_path, photo_dir):
    proc = run(["--config", "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200", "--data", str(photo_dir), "--output",
                str(tmp_path / "dry"), "--dry-run", "--batch-size-per-device", "4", "--num-workers", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: one optimizer step done" in proc.stderr
    # fp16 has no CPU autocast: mapped explicitly, to what this CPU computes natively
    expected = "precision bf16 (cpu_precision auto: this CPU has native bf16" if native_bf16() else \
        "precision fp32 (cpu_precision auto: this CPU has no native bf16"
    assert expected in proc.stderr
    assert not (tmp_path / "dry" / "final").exists()


@pytest.mark.parametrize("args, message", [
    (["--config", "nope"], "unknown config 'nope'; presets:"),
    (["--config", "smoke", "--data", "/no/such/folder"], "does not exist"),
    (["--config", "smoke", "--data", "EMPTY"], "holds no images"),
    (["--config", "smoke", "--batch-size-per-device", "3"], "not divisible"),
    (["--config", "smoke", "--batch-size-per-device", "64", "--total-batch-size", "128"], "cannot fill one optimizer step"),
])
def test_clear_errors(tmp_path, photo_dir, args, message, capsys):
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]
    if "--data" not in args:
        args += ["--data", str(photo_dir)]
    assert pretrain.main([*args, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "o" / "final").exists()


def test_unknown_override_key_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        pretrain.main(["--config", "smoke", "--data", ".", "--output", "x", "--learning-rate", "1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --learning-rate" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    text = capsys.readouterr().out
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "--resume" in text and "--dry-run" in text
