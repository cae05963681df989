"""Learning in the same wall time: this project's trainer against lightly's BYOL, on the same images, the same
architecture and the same evaluation, with random initialisation beside them.

    python benchmarks/learning.py --minutes 8 --seeds 0 1 2              # byol_r18_short vs lightly, 3 seeds
    python benchmarks/learning.py --minutes 8 --trainers before ours lightly --seeds 0
    python benchmarks/learning.py --minutes 4 --trainers ours --variant tau97=--tau-base,0.97 --seeds 0
    python benchmarks/learning.py --minutes 2 --trainers ours --keep-runs runs/learning   # keep the run folders
    python benchmarks/learning.py --minutes 30 --seeds 0 --checkpoints 10   # and RankMe against kNN over one run

Data (made here, nothing downloaded): crops of the photos that ship with scikit-image, unlabeled, for pretraining
(each photo of at least 300 px with some contrast, 20 with scikit-image 0.26, x 96 crops at 128²). Evaluation,
kNN top-1 (weighted, k=20, on the ``avgpool`` features at 64²) on two labelled sets that pretraining never sees:
other crops of the same photos labelled by photo (20 classes), and scikit-learn's digits upsampled to 64² (10
classes).

Trainers, each a whole process timed from its start to its exit:

- ``ours``: ``training/pretrain.py --config byol_r18_short`` as a user runs it (data, output, image size, budget);
- ``before``: the ``byol_r18_cifar10`` preset with the ImageNet stem at 64² (what this project offered before);
- ``lightly``: lightly's documented BYOL example (torchvision ResNet-18, its heads, transforms, SGD lr 0.06,
  fp32), batch 128, run until the same wall time is up (``pip install -e ".[bench]"``);
- ``random``: the same architecture, randomly initialised (per seed).

Printed per run: optimizer steps, images seen, images per wall-clock minute of the whole process, and the kNN
figures; then the means and spreads over seeds, our whole-run rate against our step-only rate (forward, backward
and the target update at the same batch and precision, no data, measured in this process afterwards), and our
images per minute against lightly's; the Spearman correlations of the label-free figures (RankMe, the std of
the normalized outputs) against kNN across runs and across layers, and with ``--checkpoints N`` over the
checkpoints of each of our runs (all of them, and from the lowest RankMe on, what ``--keep-best rankme`` chooses
from). The CPU's capabilities are printed beside every figure.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import processes  # noqa: E402

SIZE = 64


# ---------------------------------------------------------------------------------------------------------- data
def photos() -> list:
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    out = []
    for path in sorted(data.glob("*")):
        if path.suffix.lower() in (".png", ".jpg"):
            img = Image.open(path).convert("RGB")
            if min(img.size) >= 300 and np.asarray(img).std() > 20:
                out.append((path.stem, img))
    return out


def make_data(root: Path, per_photo: int = 96) -> dict[str, Path]:
    """root/unlabeled/*.jpg (pretraining), root/photos/{train,val}/<photo>/ and root/digits/{train,val}/<digit>/."""
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    for split, count in (("unlabeled", per_photo), ("photos/train", per_photo // 2), ("photos/val", per_photo // 4)):
        for name, img in photos():
            folder = root / split / ("" if split == "unlabeled" else name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.uniform(0.3, 0.7) * min(img.size))
                left = int(rng.integers(0, img.width - side + 1))
                top = int(rng.integers(0, img.height - side + 1))
                crop = img.crop((left, top, left + side, top + side)).resize((SIZE * 2, SIZE * 2))
                crop.save(folder / f"{name}_{i}.jpg", quality=92)
    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        folder = root / "digits" / ("val" if i % 3 == 0 else "train") / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(folder / f"{i}.png")
    return {"unlabeled": root / "unlabeled", "photos": root / "photos", "digits": root / "digits"}


# ---------------------------------------------------------------------------------------------------------- trainers
def run_ours(config: str, data: Path, out: Path, minutes: float, seed: int, extra: list[str]) -> dict:
    """``pretrain.py`` as a user runs it; the whole process is timed."""
    cmd = [sys.executable, str(REPO / "training" / "pretrain.py"), "--config", config, "--data", str(data),
           "--output", str(out), "--image-size", str(SIZE), "--time-budget-min", str(minutes), "--seed", str(seed)]
    if config == "byol_r18_cifar10":  # the preset was made for 32² CIFAR: the ImageNet stem and 64² as asked
        cmd += ["--stem", "imagenet", "--eval-resize", str(int(SIZE * 1.14))]
    t0 = time.monotonic()
    processes.run([*cmd, *extra], check=True, cwd=REPO, stdout=sys.stdout, stderr=sys.stderr)
    wall = time.monotonic() - t0
    import yaml

    record = yaml.safe_load((out / "config.yaml").read_text())
    steps = record["time_budget"]["done_steps"]
    return {"model": str(out / "final"), "run": str(out), "steps": steps, "images": steps * record["optimizer_batch"],
            "wall_s": wall,
            "batch": record["optimizer_batch"], "precision": record["precision"], "config": record["config"],
            "wall_time": record.get("wall_time")}


def run_lightly_process(data: Path, out: Path, minutes: float, seed: int, batch: int) -> dict:
    t0 = time.monotonic()
    processes.run([sys.executable, __file__, "--lightly-run", str(out), "--data", str(data), "--minutes", str(minutes),
                   "--seeds", str(seed), "--lightly-batch", str(batch)], check=True, cwd=REPO, stdout=sys.stdout,
                  stderr=sys.stderr)
    wall = time.monotonic() - t0
    info = json.loads((out / "lightly.json").read_text())
    return {"model": str(out / "final"), "wall_s": wall, **info}


def lightly_main(data: Path, out: Path, minutes: float, seed: int, batch: int) -> None:
    """lightly's documented BYOL example (its heads, transforms, SGD and momentum schedule), until the time is up.
    The deadline counts from this process's start, imports included, as ours does."""
    deadline = START + minutes * 60
    import torch
    import torchvision
    from lightly.data import LightlyDataset
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule

    from hub.convert.checkpoint import convert_checkpoint

    torch.manual_seed(seed)
    resnet = torchvision.models.resnet18()
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
    proj, pred = BYOLProjectionHead(512, 1024, 256), BYOLPredictionHead(256, 1024, 256)
    backbone_m, proj_m = copy.deepcopy(backbone), copy.deepcopy(proj)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(proj_m)
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=SIZE, gaussian_blur=0.0),
                              view_2_transform=BYOLView2Transform(input_size=SIZE, gaussian_blur=0.0))
    dataset = LightlyDataset(str(data), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=os.cpu_count() or 2, persistent_workers=True)
    criterion = NegativeCosineSimilarity()
    opt = torch.optim.SGD(list(backbone.parameters()) + list(proj.parameters()) + list(pred.parameters()), lr=0.06)
    epoch, steps, loss = 0, 0, torch.zeros(())
    save_s = 5.0  # the conversion and save at the end, kept inside the budget
    while time.monotonic() < deadline - save_s:
        m = cosine_schedule(epoch, 100, 0.996, 1)
        for (x0, x1), _, _ in loader:
            if time.monotonic() >= deadline - save_s:
                break
            update_momentum(backbone, backbone_m, m=m)
            update_momentum(proj, proj_m, m=m)
            p0 = pred(proj(backbone(x0).flatten(1)))
            z0 = proj_m(backbone_m(x0).flatten(1)).detach()
            p1 = pred(proj(backbone(x1).flatten(1)))
            z1 = proj_m(backbone_m(x1).flatten(1)).detach()
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps += 1
        epoch += 1
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone." + k: v for k, v in backbone.state_dict().items()}, out / "lightly.pth")
    model = convert_checkpoint(out / "lightly.pth", source="lightly", name="lightly-byol")
    model.config.preprocessing = type(model.config.preprocessing)(resize_size=int(SIZE * 1.14), crop_size=SIZE)
    model.save_pretrained(out / "final", onnx=False, transformers=False)
    (out / "lightly.json").write_text(json.dumps({"steps": steps, "images": steps * batch, "batch": batch,
                                                  "epochs": epoch, "last_loss": float(loss), "precision": "fp32"}))
    print(f"lightly: {steps} steps, {epoch} epochs, last loss {float(loss):.4f}", flush=True)


def random_model(out: Path, seed: int) -> dict:
    import torch

    from hub import BYOLModel, ModelConfig

    torch.manual_seed(seed)
    model = BYOLModel(ModelConfig(architecture="resnet18", name="random-init",
                                  preprocessing={"resize_size": int(SIZE * 1.14), "crop_size": SIZE}))
    return {"model": str(model.save_pretrained(out, onnx=False, transformers=False)), "steps": 0, "images": 0}


# ---------------------------------------------------------------------------------------------------------- measures
def evaluate(model, sets: dict[str, Path]) -> dict:
    """kNN top-1 (k=20) of every layer on both labelled sets, and the label-free figures of every layer on a sample
    of the unlabelled crops (what ``byol-hub spectrum`` reports), all at 64²."""
    from hub import BYOLModel
    from hub.layers import LAYERS
    from hub.spectrum import measure_images
    from training.evaluation.data import image_folder
    from training.evaluation.features import features_of
    from training.evaluation.knn import weighted_knn

    model = (model if isinstance(model, BYOLModel) else BYOLModel.from_pretrained(model)).eval()
    # one protocol for every model, whatever size it trained at: resize 73, center crop 64
    model.config.preprocessing = dataclasses.replace(model.config.preprocessing, resize_size=int(SIZE * 1.14),
                                                     crop_size=SIZE)
    out: dict = {"knn": {}, "knn_layers": {}}
    for name in ("photos", "digits"):
        train, val = image_folder(sets[name] / "train"), image_folder(sets[name] / "val")
        ftrain = features_of(model, train.paths, LAYERS, "gap", batch_size=128)
        fval = features_of(model, val.paths, LAYERS, "gap", batch_size=128)
        out["knn_layers"][name] = {layer: round(weighted_knn(ftrain[layer], train.labels, fval[layer], val.labels,
                                                             ks=(20,))[20], 2) for layer in LAYERS}
        out["knn"][name] = out["knn_layers"][name]["avgpool"]
    spectrum = measure_images(model, str(sets["unlabeled"]), sample=768, layers=LAYERS)["layers"]
    out["rankme_layers"] = {layer: v["rankme"] for layer, v in spectrum.items()}
    out["rankme"] = out["rankme_layers"]["avgpool"]
    out["label_free_std"] = spectrum["avgpool"]["std"]
    return out


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


def checkpoint_correlation(run_dir: Path) -> dict | None:
    """Spearman of RankMe against kNN over one run's evaluations (``--knn-monitor``: both are measured at once)."""
    path = run_dir / "logs" / "metrics.jsonl"
    if not path.exists():
        return None
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        by_step.setdefault(entry["step"], {}).update(entry)
    rows = [(e["step"], e["rankme"], e["label_free_std"], e["knn_top1"]) for e in by_step.values()
            if "rankme" in e and "knn_top1" in e]
    if len(rows) < 3:
        return None
    _, ranks, stds, knns = map(list, zip(*rows))
    return {"points": len(rows), "spearman": round(spearman(ranks, knns), 3),
            "spearman_std": round(spearman(stds, knns), 3), "rows": rows}


def checkpoint_series(run_dir: Path, sets: dict[str, Path]) -> dict | None:
    """Every checkpoint of one run (``--checkpoints N``) evaluated as the final model is: kNN on both sets and the
    label-free figures; Spearman of each label-free signal against kNN over the run's course."""
    from hub.convert.checkpoint import convert_checkpoint

    steps = sorted((int(p.name.removeprefix("step_")), p) for p in (run_dir / "checkpoints").glob("step_*")
                   if (p / "model.safetensors").exists())
    rows = []
    for step, ckpt in steps:
        figures = evaluate(convert_checkpoint(ckpt / "model.safetensors", prefix="online.backbone.",
                                              name=f"step-{step}"), sets)
        rows.append({"step": step, "rankme": figures["rankme"], "label_free_std": figures["label_free_std"],
                     **{f"knn_{s}": figures["knn"][s] for s in ("photos", "digits")}})
        print(f"  checkpoint step {step}: kNN photos {figures['knn']['photos']:.1f}, digits "
              f"{figures['knn']['digits']:.1f}; RankMe {figures['rankme']:.1f}, std {figures['label_free_std']:.4f}",
              flush=True)
    if len(rows) < 3:
        return None
    trough = min(range(len(rows)), key=lambda i: rows[i]["rankme"])  # --keep-best chooses from here on
    later = rows[trough:]

    def corr(chosen: list[dict]) -> dict[str, float]:
        return {f"{signal}_{s}": round(spearman([r[signal] for r in chosen], [r[f"knn_{s}"] for r in chosen]), 3)
                for signal in ("rankme", "label_free_std") for s in ("photos", "digits")}

    return {"points": len(rows), "rows": rows, "spearman": corr(rows), "lowest_rankme_step": rows[trough]["step"],
            "points_from_lowest": len(later), "spearman_from_lowest": corr(later) if len(later) >= 3 else None}


def step_times(model, opt, v1, v2, precision: str, steps: int, forward=None) -> list[float]:
    """Seconds of each training step (two views forward, backward, LARS, the target's update) on ``v1``/``v2``;
    ``forward(v1, v2) -> loss`` replaces the model's own forward (a compiled one, say)."""
    import torch

    forward = forward or (lambda a, b: model(a, b)[0])
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = forward(v1, v2)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.99)
        times.append(time.perf_counter() - t)
    return times


def step_only_rate(config: dict, precision: str, steps: int = 8) -> float:
    """Images per minute of the training step alone (two views forward, backward, LARS, the target's update) at the
    run's batch, precision, memory format and heads, on random pixels: the ceiling the whole run is measured against."""
    import torch

    from hub import ModelConfig
    from training.byol import BYOL
    from training.lars import LARS, lars_param_groups

    torch.manual_seed(0)
    model = BYOL(ModelConfig(architecture=config["architecture"], stem=config["stem"]), config["projector_hidden"],
                 config["projector_out"], config["predictor_hidden"], fuse_views=config["fuse_views"]).train()
    fmt = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = LARS(lars_param_groups([model.online, model.predictor]), lr=0.1, weight_decay=1e-6)
    batch = config["batch_size_per_device"]

    def fastest(size: int) -> float:  # the ceiling: the fastest step
        v1 = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        v2 = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        return min(step_times(model, opt, v1, v2, precision, steps)[1:])

    step_s = fastest(config["image_size"])
    if config.get("low_res_scale"):  # progressive resizing: the run's own mix of the two sizes
        f = config["low_res_fraction"]
        step_s = f * fastest(round(config["image_size"] * config["low_res_scale"])) + (1 - f) * step_s
    return batch * config["grad_accum_steps"] / step_s * 60


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, args = text.partition("=")
    if not name or not args:
        raise SystemExit(f"--variant {text!r}: expected NAME=--flag,value[,--flag,value...]")
    return name, args.split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8, help="wall-clock minutes per trainer and seed (default 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--trainers", nargs="+", default=["ours", "lightly"],
                        choices=("ours", "before", "lightly"), help="trainers to run (default: ours lightly)")
    parser.add_argument("--config", default="byol_r18_short", help="our config (default byol_r18_short)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=--FLAG,VALUE",
                        help="an extra run of ours with these overrides (repeatable), e.g. lr2=--base-lr,2.0")
    parser.add_argument("--lightly-batch", type=int, default=128, help="lightly's batch (default 128, as the issue's)")
    parser.add_argument("--per-photo", type=int, default=96, help="unlabeled crops per photo (default 96)")
    parser.add_argument("--knn-monitor", action="store_true",
                        help="ours: kNN on the photo set at every epoch end, beside RankMe (its cost is in the run's "
                             "wall time): the correlation across one run's evaluations")
    parser.add_argument("--checkpoints", type=int, default=0, metavar="N",
                        help="ours: a checkpoint every 1/N of the budget, each evaluated afterwards like the final "
                             "model (outside the run's wall time): label-free signals against kNN over one run")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lightly-run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lightly_run:
        lightly_main(args.data, args.lightly_run, args.minutes, args.seeds[0], args.lightly_batch)
        return
    from hub.hardware import cpu_summary

    cpu = cpu_summary()
    print(f"CPU: {cpu}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="learning-"))
    root = args.keep_runs or tmp
    os.environ["BYOL_CACHE"] = str(tmp / "cache")
    try:
        sets = make_data(tmp / "data", args.per_photo)
        classes = len(list((sets["photos"] / "train").iterdir()))
        print(f"data: {len(list(sets['unlabeled'].iterdir()))} unlabeled crops; kNN on photos ({classes} classes) and "
              "digits (10 classes)", flush=True)
        runs: list[dict] = []
        trainers = [(t, []) for t in args.trainers] + [(f"ours:{n}", a) for n, a in map(parse_variant, args.variant)]
        for seed in args.seeds:
            for name, extra in trainers:
                out = root / f"{name.replace(':', '-')}-seed{seed}"
                shutil.rmtree(out, ignore_errors=True)
                print(f"\n== {name} seed {seed}: {args.minutes:g} min", flush=True)
                if name == "lightly":
                    try:
                        entry = run_lightly_process(sets["unlabeled"], out, args.minutes, seed, args.lightly_batch)
                    except processes.subprocess.CalledProcessError as err:
                        print(f"lightly failed ({err}); is it installed? pip install -e '.[bench]'", flush=True)
                        continue
                else:
                    config = "byol_r18_cifar10" if name == "before" else args.config
                    if args.knn_monitor and name != "before":
                        extra = [*extra, "--knn-monitor", str(sets["photos"])]
                    if args.checkpoints:
                        extra = [*extra, "--checkpoint-every-min", str(args.minutes / args.checkpoints),
                                 "--keep-checkpoints", str(args.checkpoints + 2)]
                    entry = run_ours(config, sets["unlabeled"], out, args.minutes, seed, extra)
                    entry["checkpoints"] = checkpoint_correlation(out)
                    if args.checkpoints:
                        entry["series"] = checkpoint_series(out, sets)
                entry.update(trainer=name, seed=seed, **evaluate(entry["model"], sets))
                entry["images_per_min"] = round(entry["images"] / entry["wall_s"] * 60, 1)
                runs.append(entry)
                print(f"{name} seed {seed}: {entry['steps']} steps, {entry['images']} images in {entry['wall_s']:.0f} s "
                      f"({entry['images_per_min']:.0f} images/min); kNN photos {entry['knn']['photos']:.1f}, digits "
                      f"{entry['knn']['digits']:.1f}; RankMe {entry['rankme']:.1f}", flush=True)
            rand = random_model(root / f"random-seed{seed}", seed)
            rand.update(trainer="random", seed=seed, wall_s=0.0, images_per_min=0.0, **evaluate(rand["model"], sets))
            runs.append(rand)
        summary = summarize(runs, args.minutes, cpu)
        if args.json:
            args.json.write_text(json.dumps({"cpu": cpu, "minutes": args.minutes, "runs": runs, "summary": summary},
                                            indent=2, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(runs: list[dict], minutes: float, cpu: str) -> dict:
    print(f"\nlearning: ResNet-18 (ImageNet stem), {SIZE}², {minutes:g} min per run; CPU: {cpu}")
    print(f"{'trainer':<16}{'seeds':>6}{'steps':>10}{'images/min':>14}{'kNN photos':>16}{'kNN digits':>16}"
          f"{'RankMe':>16}")
    summary: dict = {}
    for name in dict.fromkeys(r["trainer"] for r in runs):
        rs = [r for r in runs if r["trainer"] == name]
        photos_ = [r["knn"]["photos"] for r in rs]
        digits = [r["knn"]["digits"] for r in rs]
        ranks = [r["rankme"] for r in rs]
        summary[name] = {"seeds": len(rs), "steps": statistics.mean(r["steps"] for r in rs),
                         "images_per_min": statistics.mean(r["images_per_min"] for r in rs),
                         "knn_photos": photos_, "knn_digits": digits, "rankme": ranks}
        print(f"{name:<16}{len(rs):>6}{summary[name]['steps']:>10.0f}{summary[name]['images_per_min']:>14.0f}"
              f"{spread(photos_):>16}{spread(digits):>16}{spread(ranks):>16}")
    if "ours" in summary and "lightly" in summary:
        ratio = summary["ours"]["images_per_min"] / max(summary["lightly"]["images_per_min"], 1e-9)
        gains = {s: statistics.mean(summary["ours"][f"knn_{s}"]) - statistics.mean(summary["lightly"][f"knn_{s}"])
                 for s in ("photos", "digits")}
        summary["ours_vs_lightly"] = {"images_per_min": round(ratio, 2), **{k: round(v, 2) for k, v in gains.items()}}
        print(f"ours / lightly: {ratio:.2f}x the images per minute (target >= 2); kNN {gains['photos']:+.1f} points on "
              f"photos, {gains['digits']:+.1f} on digits (target >= +6)")
    trained = [r for r in runs if r["trainer"] != "random"]
    if len(trained) >= 3:
        for signal in ("rankme", "label_free_std"):
            corr = {s: spearman([r[signal] for r in trained], [r["knn"][s] for r in trained])
                    for s in ("photos", "digits")}
            summary[f"spearman_across_runs_{signal}"] = corr
            print(f"{signal} against kNN across the {len(trained)} trained runs: Spearman {corr['photos']:.2f} on "
                  f"photos, {corr['digits']:.2f} on digits")
    layers = {}
    for r in runs:
        layers[f"{r['trainer']} seed {r['seed']}"] = {
            s: round(spearman(list(r["rankme_layers"].values()), list(r["knn_layers"][s].values())), 2)
            for s in ("photos", "digits")}
    summary["spearman_across_layers"] = layers
    print("RankMe against kNN across the six layers of each model (Spearman, photos / digits): " +
          "; ".join(f"{k} {v['photos']:.2f} / {v['digits']:.2f}" for k, v in layers.items()))
    within = [r["checkpoints"] for r in runs if r.get("checkpoints")]
    if within:
        summary["spearman_within_runs"] = [c["spearman"] for c in within]
        print("RankMe (and std) against kNN over each run's evaluations (Spearman): " +
              ", ".join(f"{c['spearman']:.2f} ({c['spearman_std']:.2f}) over {c['points']} points" for c in within))
    series = [(r["trainer"], r["seed"], r["series"]) for r in runs if r.get("series")]
    for trainer, seed, c in series:
        summary.setdefault("spearman_within_checkpoints", []).append({"trainer": trainer, "seed": seed, **{
            k: v for k, v in c.items() if k != "rows"}})
        for label, points, r in (("all", c["points"], c["spearman"]),
                                 (f"from its lowest RankMe (step {c['lowest_rankme_step']}, what --keep-best "
                                  "chooses from)", c["points_from_lowest"], c["spearman_from_lowest"])):
            if r is None:
                continue
            print(f"{trainer} seed {seed}, over its checkpoints, {label}: {points} points; Spearman against kNN "
                  f"photos / digits: RankMe {r['rankme_photos']:.2f} / {r['rankme_digits']:.2f}, std "
                  f"{r['label_free_std_photos']:.2f} / {r['label_free_std_digits']:.2f}")
    ours = [r for r in runs if r["trainer"] == "ours"]
    if ours:
        rate = step_only_rate(ours[0]["config"], ours[0]["precision"])
        whole = statistics.mean(r["images_per_min"] for r in ours)
        summary["ours_step_only"] = {"images_per_min": round(rate, 1), "whole_run_share": round(whole / rate, 3)}
        print(f"ours: whole run {whole:.0f} images/min = {whole / rate:.0%} of the step-only rate {rate:.0f} images/min "
              f"(batch {ours[0]['batch']}, {ours[0]['precision']}; target >= 90 %)")
        if ours[0].get("wall_time"):
            print("ours, where the wall time went (seed " f"{ours[0]['seed']}): " +
                  ", ".join(f"{k} {v:.1f} s" for k, v in ours[0]["wall_time"].items()))
    return summary


START = time.monotonic()

if __name__ == "__main__":
    with processes.interruptible():  # SIGTERM unwinds like Ctrl-C: a training run's whole group is stopped
        main()
