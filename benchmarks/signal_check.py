"""Honest signal check: equal wall-clock BYOL pretraining for this trainer and lightly's BYOL, then kNN and
linear evaluation of both and of a random-init model of the same architecture, side by side.

    python benchmarks/signal_check.py [--minutes 10] [--batch 128] [--size 64]

Data: crops of the real photos that ship with scikit-image, labeled by their source photo (pretraining
ignores the labels). Same backbone (ResNet-18), resolution, batch and wall time for both trainers; no blur
(as in the calibration run of the issue), channels_last for both, and the same precision for both: bf16
autocast where the CPU has native bf16, fp32 otherwise (``--precision``). Our trainer plans its schedule to
the budget (``--time-budget-min``); lightly's example runs its loop until the time is up. Evaluation: weighted kNN
(k=20, 200) and the linear protocol (fast mode, cached center-crop features) through `training.evaluate`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import processes  # noqa: E402


def make_data(root: Path, size: int, per_photo: int) -> tuple[Path, Path, Path]:
    """root/unlabeled/*.jpg for pretraining, root/train/<photo>/ and root/val/<photo>/ crops for evaluation."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    photos = []
    for path in sorted(data.glob("*")):
        if path.suffix.lower() in (".png", ".jpg"):
            img = Image.open(path).convert("RGB")
            if min(img.size) >= 300 and np.asarray(img).std() > 20:
                photos.append((path.stem, img))
    rng = np.random.default_rng(0)
    for split, count in (("unlabeled", per_photo), ("train", per_photo // 2), ("val", per_photo // 4)):
        for name, img in photos:
            folder = root / split / ("" if split == "unlabeled" else name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.uniform(0.3, 0.7) * min(img.size))
                left = int(rng.integers(0, img.width - side + 1))
                top = int(rng.integers(0, img.height - side + 1))
                crop = img.crop((left, top, left + side, top + side)).resize((size * 2, size * 2))
                crop.save(folder / f"{name}_{i}.jpg", quality=92)
    return root / "unlabeled", root / "train", root / "val"


def train_ours(data: Path, out: Path, minutes: float, batch: int, size: int, epochs: int, bf16: bool) -> Path:
    cmd = [sys.executable, str(REPO / "training" / "pretrain.py"), "--config", "smoke", "--data", str(data),
           "--output", str(out), "--image-size", str(size), "--eval-resize", str(int(size * 1.14)),
           "--batch-size-per-device", str(batch), "--grad-accum-steps", "1", "--total-batch-size", str(batch),
           "--projector-hidden", "1024", "--projector-out", "256", "--predictor-hidden", "1024",
           "--blur-probs", "0", "0", "--epochs", str(epochs), "--warmup-epochs", "2", "--base-lr", "0.3",
           "--mixed-precision", "bf16" if bf16 else "no", "--num-workers", "2", "--time-budget-min", str(minutes),
           "--checkpoint-every", "100000", "--log-every", "20", "--no-export-onnx"]
    processes.run(cmd, check=True, cwd=REPO)
    return out / "final"


def train_lightly(data: Path, out: Path, minutes: float, batch: int, size: int, bf16: bool) -> Path:
    """lightly's documented BYOL example, same backbone/resolution/batch/precision/time, then converted."""
    import torchvision
    from lightly.data import LightlyDataset
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule

    from hub.convert.checkpoint import convert_checkpoint

    resnet = torchvision.models.resnet18()
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
    proj, pred = BYOLProjectionHead(512, 1024, 256), BYOLPredictionHead(256, 1024, 256)
    backbone_m, proj_m = copy.deepcopy(backbone), copy.deepcopy(proj)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(proj_m)
    torch.nn.ModuleList([backbone, proj, pred, backbone_m, proj_m]).to(memory_format=torch.channels_last)
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=size, gaussian_blur=0.0),
                              view_2_transform=BYOLView2Transform(input_size=size, gaussian_blur=0.0))
    dataset = LightlyDataset(str(data), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=2,
                                         persistent_workers=True)
    criterion = NegativeCosineSimilarity()
    opt = torch.optim.SGD(list(backbone.parameters()) + list(proj.parameters()) + list(pred.parameters()), lr=0.06)
    end = time.monotonic() + minutes * 60
    epoch, steps = 0, 0
    while time.monotonic() < end:
        m = cosine_schedule(epoch, 100, 0.996, 1)
        for (x0, x1), _, _ in loader:
            if time.monotonic() >= end:
                break
            update_momentum(backbone, backbone_m, m=m)
            update_momentum(proj, proj_m, m=m)
            x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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
    print(f"lightly: {steps} steps, {epoch} epochs, last loss {float(loss):.4f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone." + k: v for k, v in backbone.state_dict().items()}, out / "lightly.pth")
    model = convert_checkpoint(out / "lightly.pth", source="lightly", name="lightly-byol")
    model.config.preprocessing = type(model.config.preprocessing)(resize_size=int(size * 1.14), crop_size=size)
    return model.save_pretrained(out / "final")


def random_model(out: Path, size: int) -> Path:
    from hub import BYOLModel, ModelConfig

    torch.manual_seed(0)
    model = BYOLModel(ModelConfig(architecture="resnet18", name="random-init",
                                  preprocessing={"resize_size": int(size * 1.14), "crop_size": size}))
    return model.save_pretrained(out)


def evaluate(model: Path, train: Path, val: Path) -> dict[str, float]:
    from training.evaluate import main as run

    scores = {}
    run(["knn", "--model", str(model), "--train", str(train), "--val", str(val), "--no-progress",
         "--dataset-name", "photo-crops"])
    run(["linear", "--model", str(model), "--train", str(train), "--val", str(val), "--no-progress",
         "--dataset-name", "photo-crops", "--epochs", "30", "--lr", "1.0", "--seeds", "3"])
    for name in ("knn-photo-crops-features.json", "linear-photo-crops-fast.json"):
        for entry in json.loads((model / "results" / name).read_text())["results"]:
            label = f"kNN k={entry['k']}" if entry["protocol"] == "knn" else "linear"
            scores[label] = entry["value"]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10, help="wall-clock budget per trainer (default 10)")
    parser.add_argument("--batch", type=int, default=128, help="batch (default 128)")
    parser.add_argument("--size", type=int, default=64, help="crop size (default 64)")
    parser.add_argument("--per-photo", type=int, default=96, help="unlabeled crops per photo (default 96)")
    parser.add_argument("--epochs", type=int, default=60,
                        help="our config's schedule length; the time budget plans it down to fit (default 60)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="both trainers' precision; auto: bf16 where the CPU has native bf16, else fp32")
    args = parser.parse_args()
    from hub.hardware import cpu_summary, native_bf16

    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16())
    print(f"CPU: {cpu_summary()}; precision {'bf16' if bf16 else 'fp32'} for both trainers", flush=True)
    torch.set_num_threads(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["BYOL_CACHE"] = str(root / "cache")
        unlabeled, train, val = make_data(root / "data", args.size, args.per_photo)
        classes = len(list(train.iterdir()))
        print(f"data: {len(list(unlabeled.iterdir()))} unlabeled crops of {classes} photos; chance {100 / classes:.1f}%")
        models = {"ours": train_ours(unlabeled, root / "ours", args.minutes, args.batch, args.size, args.epochs,
                                     bf16)}
        try:
            models["lightly"] = train_lightly(unlabeled, root / "lightly", args.minutes, args.batch, args.size, bf16)
        except ImportError as err:
            print(f"lightly skipped: {err} (pip install -e '.[bench]')")
        models["random init"] = random_model(root / "random", args.size)
        table = {name: evaluate(path, train, val) for name, path in models.items()}
    columns = list(next(iter(table.values())))
    print(f"\nsignal check: ResNet-18, {args.size}x{args.size}, batch {args.batch}, {args.minutes:g} min each, "
          f"{'bf16' if bf16 else 'fp32'}; CPU: {cpu_summary()}")
    print(f"{'':<12}" + "".join(f"{c:>12}" for c in columns))
    for name, scores in table.items():
        print(f"{name:<12}" + "".join(f"{scores[c]:>12.2f}" for c in columns))


if __name__ == "__main__":
    with processes.interruptible():  # SIGTERM unwinds like Ctrl-C: the training run's whole group is stopped
        main()
