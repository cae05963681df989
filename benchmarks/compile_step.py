"""Does ``torch.compile`` pay for its compile time inside a short budget? The BYOL training step, eager against compiled.

    python benchmarks/compile_step.py                       # ResNet-18, 64², batch 256, the CPU's precision
    python benchmarks/compile_step.py --size 48 --batch 128 --mode max-autotune-no-cudagraphs

The step is the trainer's own (``training.byol.BYOL``: two views forward, backward, LARS, the target's update) at
``byol_r18_short``'s heads, on random pixels. Printed, beside the CPU's capabilities: the eager step time, the
compiled step's first call (the compile) and steady time, the speed-up, and the budget from which compiling gains
time (its compile time over the time it saves per step, in minutes of steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="image side (default 64)")
    parser.add_argument("--batch", type=int, default=256, help="batch per step (default 256, byol_r18_short's)")
    parser.add_argument("--steps", type=int, default=6, help="steady steps timed on each side (default 6)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where the CPU computes bf16 natively, as the trainer chooses (default)")
    parser.add_argument("--mode", default="default", help="torch.compile mode (default: default)")
    args = parser.parse_args()

    import torch
    import yaml

    from benchmarks.learning import step_times
    from hub import ModelConfig
    from hub.hardware import cpu_summary, native_bf16
    from training.byol import BYOL
    from training.lars import LARS, lars_param_groups

    cpu = cpu_summary()
    precision = args.precision if args.precision != "auto" else ("bf16" if native_bf16() else "fp32")
    print(f"CPU: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; {precision}", flush=True)
    cfg = yaml.safe_load((REPO / "training" / "configs" / "byol_r18_short.yaml").read_text())
    results = {}
    for side in ("eager", "compiled"):
        torch.manual_seed(0)
        model = BYOL(ModelConfig(architecture="resnet18", stem="imagenet"), cfg.get("projector_hidden", 4096),
                     cfg.get("projector_out", 256), cfg.get("predictor_hidden", 4096)).train()
        model = model.to(memory_format=torch.channels_last)
        opt = LARS(lars_param_groups([model.online, model.predictor]), lr=0.1, weight_decay=1e-6)
        v1 = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
        v2 = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)

        def forward(a, b, model=model):
            return model(a, b)[0]

        step_fn = torch.compile(forward, mode=args.mode) if side == "compiled" else forward
        t0 = time.perf_counter()
        first = step_times(model, opt, v1, v2, precision, 1, step_fn)[0]
        steady = step_times(model, opt, v1, v2, precision, args.steps, step_fn)
        results[side] = {"first_s": first, "step_s": statistics.median(steady), "total_s": time.perf_counter() - t0}
        print(f"{side}: first step {first:.1f} s, then {results[side]['step_s']:.3f} s a step (median of "
              f"{args.steps})", flush=True)
    eager, compiled = results["eager"], results["compiled"]
    saved = eager["step_s"] - compiled["step_s"]
    extra = compiled["first_s"] - eager["first_s"]
    print(f"\ntorch.compile ({args.mode}) of the BYOL step, ResNet-18 {args.size}², batch {args.batch}, {precision}; "
          f"CPU: {cpu}")
    print(f"eager {eager['step_s']:.3f} s a step; compiled {compiled['step_s']:.3f} s "
          f"({eager['step_s'] / compiled['step_s']:.2f}x), its compile {extra:.0f} s")
    if saved > 0:
        steps = extra / saved
        print(f"compiling gains time after {steps:.0f} steps: from a budget of {steps * eager['step_s'] / 60:.1f} "
              "minutes of steps")
    else:
        print("compiled steps are not faster here: compiling never pays")


if __name__ == "__main__":
    main()
