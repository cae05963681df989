"""int8 vs fp32 ONNX Runtime on real photos: speed-up and cosine similarity of the embeddings.

    python benchmarks/int8.py [--model DIR] [--batch 8] [--calibration DIR]

``--model`` defaults to the demo model that ``scripts/serve.py`` makes (trained weights: random weights
prove little about quantization error). The int8 graph is made with ``byol-hub export --int8`` when the
folder lacks one; calibration and evaluation photos are kept apart (different crops of the photos).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image


def photos() -> tuple[list[Image.Image], list[Image.Image]]:
    """(calibration, evaluation): left and right halves of scikit-image's photos, plus flips."""
    import skimage

    root = Path(skimage.__file__).parent / "data"
    calib, evaluation = [], []
    for path in sorted(root.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg"):
            continue
        img = Image.open(path).convert("RGB")
        if min(img.size) < 128:
            continue
        w, h = img.size
        calib += [img.crop((0, 0, w // 2 + w // 8, h)), img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
        evaluation += [img.crop((w // 2 - w // 8, 0, w, h)), img]
    return calib, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "byol" / "demo-resnet18"),
                        help="model folder with model.onnx (default: the demo model)")
    parser.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per graph (default 10)")
    args = parser.parse_args()

    import onnxruntime as ort

    from hub.config import ONNX_INT8_NAME, ONNX_NAME, ModelConfig
    from hub.export.quantize import quantize_int8
    from hub.preprocess import preprocess

    folder = Path(args.model)
    calib, evaluation = photos()
    if not (folder / ONNX_INT8_NAME).exists():
        quantize_int8(folder, calib)
    cfg = ModelConfig.load(folder)
    pixels = preprocess(evaluation, cfg.preprocessing)
    sessions = {name: ort.InferenceSession(str(folder / f), providers=["CPUExecutionProvider"])
                for name, f in (("fp32", ONNX_NAME), ("int8", ONNX_INT8_NAME))}
    outputs = {name: dict(zip([o.name for o in s.get_outputs()], s.run(None, {"pixel_values": pixels})))
               for name, s in sessions.items()}
    batch = pixels[: args.batch]
    speed = {}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, {"pixel_values": batch})
    times = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"pixel_values": batch})
            times[name].append(time.perf_counter() - start)
    for name in sessions:
        speed[name] = len(batch) / statistics.median(times[name])
    from hub.hardware import cpu_summary

    print(f"CPU: {cpu_summary()}")
    print(f"{folder.name} ({cfg.architecture} at {cfg.input_size}x{cfg.input_size}{', DEMO weights' if cfg.demo else ''}),"
          f" {len(evaluation)} evaluation photos, batch {len(batch)}")
    print(f"  fp32 {speed['fp32']:.1f} img/s, int8 {speed['int8']:.1f} img/s: speed-up {speed['int8'] / speed['fp32']:.2f}x")
    for layer in ("feature3", "feature4", "feature5", "avgpool"):
        a, b = outputs["fp32"][layer], outputs["int8"][layer]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"  cosine int8 vs fp32 {layer:<9} mean {cos.mean():.4f}  min {cos.min():.4f}")


if __name__ == "__main__":
    main()
