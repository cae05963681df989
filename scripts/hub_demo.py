"""A tour of the model hub on this machine, offline.

Builds an *untrained* ResNet-18 (random weights, used only to show the API and file layout, never
presented as a model), saves it as a model folder with ONNX, reloads it strictly, embeds real photos
that ship with scikit-image through both PyTorch and ONNX Runtime, and prints what a user would check.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="model folder to write (default: a temporary folder)")
    args = parser.parse_args()

    import onnxruntime as ort
    import skimage
    import torch

    from hub import BYOLModel, ModelConfig

    out = Path(args.out or tempfile.mkdtemp(prefix="byol-hub-demo-"))
    photos = [Image.open(Path(skimage.__file__).parent / "data" / n).convert("RGB")
              for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    model = BYOLModel(ModelConfig(architecture="resnet18", name="untrained-resnet18-demo"))
    model.save_pretrained(out, onnx=True)
    print(f"saved an UNTRAINED resnet18 (API demo only) to {out}: {sorted(p.name for p in out.iterdir())}")

    loaded = BYOLModel.from_pretrained(out)
    pixels = loaded.preprocess(photos)
    with torch.no_grad():
        feats = loaded.features(pixels, layers=("feature3", "feature5", "avgpool"), pooling="mhead")
    for name, value in feats.items():
        print(f"  {name:<9} {tuple(value.shape)}")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (avg,) = session.run(["avgpool"], {"pixel_values": pixels.numpy()})
    diff = np.abs(avg - feats["avgpool"].numpy()).max()
    print(f"ONNX Runtime vs PyTorch avgpool: max abs diff {diff:.2e}")
    print(f"next: byol-hub info {out}")


if __name__ == "__main__":
    main()
