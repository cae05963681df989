"""What makes CPU runs faster keeps the method: decoded images kept in memory, loader workers sized to the cores,
checkpoints by wall time, the machine's choices (never over what the user asked), and the wall-time split."""

from __future__ import annotations

import time

import numpy as np
import pytest

from training.augment import AugmentConfig
from training.config import ConfigError, TrainConfig, load_preset
from training.data import DataError, SubsetSource, TwoViewDataset, hold_out, open_source
from training.machine import machine_settings
from training.schedule_plan import StepPlan, plan_for_budget
from training.wallclock import WallClock


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("big")
    photos[0].resize((400, 300)).save(folder / "a.jpg", quality=90)
    photos[1].resize((100, 120)).save(folder / "b.png")
    (folder / "c.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


def test_decoded_images_are_kept_shrunk_to_what_the_crops_need_and_views_stay_the_recipes(big_photo):
    source = open_source(str(big_photo))
    cached = TwoViewDataset(source, AugmentConfig(size=64), seed=0, backend="opencv", cache_mb=64)
    plain = TwoViewDataset(source, AugmentConfig(size=64), seed=0, backend="opencv")
    names = [source.item_path(i).rsplit("/", 1)[-1] for i in range(len(source))]
    a, b = names.index("a.jpg"), names.index("b.png")
    first = cached.load(a)
    assert first.shape == (128, 171, 3) and first.dtype == np.uint8  # shorter side 2 x 64, aspect kept
    assert cached.load(a) is first  # decoded once
    assert cached.load(b).shape == (120, 100, 3)  # already small: kept as it is
    assert cached.load(names.index("c.jpg")) is None  # unreadable: skipped, never cached
    v1, v2, skipped = cached[(0, b)]
    w1, w2, _ = plain[(0, b)]
    assert np.array_equal(v1, w1) and np.array_equal(v2, w2) and skipped == 0  # same draws, same pixels
    assert cached[(0, a)][0].shape == (64, 64, 3)


def test_the_cache_stays_under_its_budget(big_photo):
    source = open_source(str(big_photo))
    tiny = TwoViewDataset(source, AugmentConfig(size=64), seed=0, backend="opencv", cache_mb=0)
    assert tiny.cache_bytes == 0
    one = TwoViewDataset(source, AugmentConfig(size=64), seed=0, backend="opencv", cache_mb=1)
    one.cache_bytes = 128 * 171 * 3 + 10  # room for the big image only
    for i in range(len(source)):
        one.load(i)
    assert one._cached <= one.cache_bytes and len(one._cache) == 1
    with pytest.raises(DataError, match="decode_cache_mb must be >= 0"):
        TwoViewDataset(source, AugmentConfig(size=64), seed=0, backend="opencv", cache_mb=-1)


def test_hold_out_is_fixed_disjoint_and_skipped_for_small_folders(big_photo):
    train, held = hold_out(1000, 512, seed=3)
    assert len(held) == 100 and not set(train) & set(held) and sorted(train + held) == list(range(1000))
    assert hold_out(1000, 512, seed=3) == (train, held)  # every rank and every resume holds out the same
    assert hold_out(5000, 64, seed=0)[1].__len__() == 64
    assert hold_out(150, 512, seed=0) == (list(range(150)), [])  # 15 would be too few to measure
    source = open_source(str(big_photo))
    subset = SubsetSource(source, [2, 0])
    assert len(subset) == 2 and subset.read(1) == source.read(0) and subset.item_id(0) == source.item_id(2)


def test_machine_settings_choose_for_cpu_and_gpu_and_never_override_the_user():
    cfg = TrainConfig(**{**load_preset("byol_r18_short"), "image_size": 96})
    cpu, chosen = machine_settings(cfg, "cpu", world=1, explicit={"image_size"})
    assert (cpu.augment_backend, cpu.num_workers, cpu.cpu_precision) == ("opencv", 0, "auto")
    assert cpu.batch_size_per_device == cpu.total_batch_size and cpu.decode_cache_mb > 0
    assert cpu.eval_resize == 110 and set(chosen) >= {"batch_size_per_device", "eval_resize", "augment_backend"}
    gpu, _ = machine_settings(cfg, "cuda", world=4, explicit=set(), bf16_supported=True)
    assert (gpu.augment_backend, gpu.mixed_precision) == ("device", "bf16")
    assert gpu.total_batch_size == 4 * gpu.batch_size_per_device
    assert machine_settings(cfg, "cuda", 1, set(), bf16_supported=False)[0].mixed_precision == "fp16"
    mine = TrainConfig(**{**load_preset("byol_r18_short"), "batch_size_per_device": 32, "total_batch_size": 32})
    kept, chosen = machine_settings(mine, "cpu", 1, explicit={"batch_size_per_device", "total_batch_size"})
    assert kept.batch_size_per_device == 32 and "batch_size_per_device" not in chosen
    seed = TrainConfig(**load_preset("byol_r18_cifar10"))
    assert machine_settings(seed, "cpu", 1, set()) == (seed, {})  # the seed's recipes stay as they are


def test_new_options_are_checked():
    with pytest.raises(ConfigError, match="keep_best 'loss'; accepted: rankme"):
        TrainConfig(keep_best="loss")
    with pytest.raises(ConfigError, match="label_free_sample must be > 0"):
        TrainConfig(keep_best="rankme", label_free_sample=0)


def test_checkpoints_by_wall_time_are_planned_and_epoch_ends_can_be_skipped():
    full = StepPlan(steps_per_epoch=5, total_steps=10_000, warmup_steps=100)
    kw = dict(budget_s=600, elapsed_s=10, done_steps=4, step_s=1.0, checkpoint_s=2.0, checkpoint_every=10**6,
              monitor_s=0.0, export_s=5.0)
    every_epoch = plan_for_budget(full, **kw).total_steps
    timed = plan_for_budget(full, **kw, epoch_checkpoints=False, checkpoint_every_s=120).total_steps
    none = plan_for_budget(full, **kw, epoch_checkpoints=False).total_steps
    assert every_epoch < timed < none == 4 + 585
    assert timed == 4 + 577  # 577 s of steps and the 4 checkpoints of 2 s that ~9.6 min of steps take


def test_the_wall_clock_splits_the_run_and_accounts_for_all_of_it():
    clock = WallClock(time.monotonic() - 1.0)
    clock.start_up_done()
    with clock.section("steps"):
        time.sleep(0.05)
    with clock.section("data"):
        time.sleep(0.01)
    report = clock.report(earlier_s=12.0)
    assert report["start-up"] >= 1.0 and report["steps"] >= 0.05 and report["earlier_processes"] == 12.0
    parts = sum(v for k, v in report.items() if k not in ("total", "earlier_processes"))
    assert parts == pytest.approx(report["total"], abs=0.02)
    assert clock.line().startswith("wall time 0.0") and "steps" in clock.line()
    with pytest.raises(ValueError, match="unknown wall-time section 'io'"):
        with clock.section("io"):
            pass


def test_loader_workers_take_half_the_cores_this_process_may_use():
    import os

    from training.pretrain import loader_workers

    cores = len(os.sched_getaffinity(0))
    assert loader_workers(-1, 1) == max(1, cores // 2)
    assert loader_workers(-1, cores * 4) == 1  # many processes on the node: still one each
    assert loader_workers(3, 1) == 3 and loader_workers(0, 1) == 0  # asked for: as asked


def test_progressive_resizing_shrinks_the_views_in_their_memory_format():
    import torch

    from training.pretrain import shrink_views

    views = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    small = shrink_views(views, 48, channels_last=True)
    assert small.shape == (4, 3, 48, 48) and small.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(small.mean(), views.mean(), atol=0.01)  # a resampling, not a crop
    assert TrainConfig(image_size=64, low_res_scale=0.75).low_res_size == 48
    with pytest.raises(ConfigError, match=r"low_res_scale 1.0 must be in \[0.25, 1\)"):
        TrainConfig(image_size=64, low_res_scale=1.0)


def test_the_knn_monitor_votes_in_float32_under_the_trainers_bf16_autocast():
    import torch

    from training.evaluation.knn import weighted_knn

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    labels = np.repeat(np.arange(3), 20)
    x = (centers[labels] + 0.1 * rng.normal(size=(60, 16))).astype(np.float32)
    plain = weighted_knn(x, labels, x, labels, ks=(5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as train_loop calls the kNN monitor on a bf16 CPU
        assert weighted_knn(x, labels, x, labels, ks=(5,)) == plain == {5: 100.0}


@pytest.mark.parametrize("rankmes, kept", [
    ([270.0, 110.0, 46.0, 60.0, 84.0, 83.0], 4),  # the measured shape: a fall from the init's rank, then a rise
    ([270.0, 150.0, 155.0, 90.0, 60.0], 4),  # still falling (an uptick on the way down): the last step
    ([50.0, 70.0, 65.0], 1),  # rising from the first evaluation: the highest
])
def test_keep_best_takes_the_highest_rankme_after_the_runs_lowest(monkeypatch, tmp_path, rankmes, kept):
    import json
    from types import SimpleNamespace

    from training import pretrain

    saved = []
    monkeypatch.setattr(pretrain, "save_best", lambda run: saved.append(dict(run.best)))
    run = SimpleNamespace(best=None, step=0, clock=WallClock(time.monotonic()))
    evals = pretrain.LabelFreeEvals.__new__(pretrain.LabelFreeEvals)
    evals.run = run
    for step, rankme in enumerate(rankmes):
        run.step = step
        evals.keep_best({"rankme": rankme, "std": 0.03})
    assert run.best["step"] == kept and run.best["rankme"] == rankmes[kept] and saved[-1] == run.best
    trough = min(range(len(rankmes)), key=rankmes.__getitem__)
    assert (run.best["trough_step"], run.best["trough_rankme"]) == (trough, rankmes[trough])
    # a best.json from before the lowest was recorded keeps its choice by the highest alone
    run.best = json.loads(json.dumps({"step": 0, "rankme": 100.0, "label_free_std": 0.03}))
    run.step = 9
    evals.keep_best({"rankme": 50.0, "std": 0.03})
    assert run.best["step"] == 0
