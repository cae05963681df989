"""Serve embeddings on a default model, from a fresh machine with no Hub access.

    python scripts/serve.py                      # demo model (made on first run), ONNX Runtime, port 8000
    python scripts/serve.py --model org/byol-r50-ep200 --backend torch --port 9000

With no --model (and no BYOL_MODEL), this script first makes a small *demo* model: a short BYOL smoke
pretraining of a ResNet-18 on the photos that ship with scikit-image (a few minutes on 2 cores),
published through hub/ with its card and model.onnx into ~/.cache/byol/demo-resnet18 (or $BYOL_CACHE).
The server's log and /info say plainly that it is a demo model. Random weights are never served.
Every other option is byol-serve's (see `byol-serve --help`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO_EPOCHS = 40


def demo_folder() -> Path:
    from storage.files import cache_root

    return cache_root() / "demo-resnet18"


def write_demo_photos(folder: Path) -> int:
    """The photos scikit-image ships, plus crops, flips and rotations of them: 48 real images."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    names = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
             "immunohistochemistry.png" if (data / "immunohistochemistry.png").exists() else "ihc.png", "retina.jpg")
    count = 0
    for name in names:
        img = Image.open(data / name).convert("RGB")
        img.thumbnail((256, 256))
        w, h = img.size
        for variant in (img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img.crop((0, 0, w * 3 // 4, h * 3 // 4)),
                        img.crop((w // 4, h // 4, w, h)), img.transpose(Image.Transpose.ROTATE_90),
                        img.crop((w // 8, 0, w * 7 // 8, h))):
            variant.save(folder / f"{count:03d}.jpg", quality=92)
            count += 1
    return count


def demo_arguments(photos: Path, run: Path) -> list[str]:
    """The demo's pretraining: the smoke preset at 96² for DEMO_EPOCHS epochs. The short-budget recipe
    (byol_r18_short) in the same wall time made a worse demo (benchmarks/demo_model.py), so the demo keeps this."""
    return ["--config", "smoke", "--data", str(photos), "--output", str(run), "--image-size", "96", "--eval-resize",
            "110", "--epochs", str(DEMO_EPOCHS), "--checkpoint-every", "1000", "--keep-checkpoints", "1",
            "--log-every", "6", "--demo", "--model-name", "byol-demo-resnet18"]


def make_demo_model(target: Path) -> None:
    from training.pretrain import main as pretrain

    print(f"no model given: making the demo model in {target} (BYOL smoke pretraining, a few minutes)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        write_demo_photos(photos)
        run = Path(tmp) / "run"
        code = pretrain(demo_arguments(photos, run))
        if code != 0:
            sys.exit(f"demo pretraining failed (exit {code})")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(target.name + ".partial")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        (run / "final").rename(staging)
        staging.rename(target)  # complete folders only: an interrupted run never leaves a half model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     add_help=False)
    parser.add_argument("--model", default=os.environ.get("BYOL_MODEL"))
    known, rest = parser.parse_known_args()
    from service.server.cli import main as serve

    if any(arg in ("-h", "--help") for arg in rest):  # the help, without making the demo model first
        print(__doc__)
        return serve(["--help"])
    model = known.model
    if model is None:
        folder = demo_folder()
        if not (folder / "config.json").exists():
            make_demo_model(folder)
        model = str(folder)
    return serve(["--model", model, *rest])


if __name__ == "__main__":
    sys.exit(main())
