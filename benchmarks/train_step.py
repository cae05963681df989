"""Time one BYOL training step (images/s) for this trainer and its peers, in the same run.

Same model (torchvision ResNet), batch, resolution and pre-made views for everyone; BatchNorm statistics per
view, one EMA update and one optimizer step per iteration, at equal precision (fp32, or bf16 autocast). Ours
runs as the trainer does by default: channels_last and both views as one batch through per-view BatchNorm
(the same method, tested in tests/training/test_method.py); lightly runs as documented (channels_last under
bf16 too, as before).

    python benchmarks/train_step.py                        # ResNet-50, 64x64, batch 32, fp32 and bf16
    python benchmarks/train_step.py --arch resnet18 --size 96 --batch 64 --precision bf16

Peers (``pip install -e ".[bench]"``): lightly's BYOL modules (its documented example, with its LARS)
and lucidrains' byol-pytorch (simplicial embeddings off; note that it pushes both views through the
online network as one concatenated batch, so its BN statistics differ). Missing peers are skipped.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torchvision


def ours(arch: str, channels_last: bool, fuse_views: bool = True) -> tuple[Callable, torch.nn.Module]:
    from hub import ModelConfig
    from training.byol import BYOL
    from training.lars import LARS, lars_param_groups

    model = BYOL(ModelConfig(architecture=arch), fuse_views=fuse_views).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = LARS(lars_param_groups([model.online, model.predictor]), lr=0.1, weight_decay=1e-6)

    def step(v1, v2, autocast):
        with autocast():
            loss, _ = model(v1, v2)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.99)
        return loss

    return step, model


def lightly_byol(arch: str, channels_last: bool) -> tuple[Callable, torch.nn.Module]:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.lars import LARS

    class Lightly(torch.nn.Module):  # lightly's documented BYOL example
        def __init__(self):
            super().__init__()
            resnet = getattr(torchvision.models, arch)()
            self.backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
            dim = resnet.fc.in_features
            self.projection_head = BYOLProjectionHead(dim, 4096, 256)
            self.prediction_head = BYOLPredictionHead(256, 4096, 256)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    model = Lightly().train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = NegativeCosineSimilarity()
    opt = LARS(model.parameters(), lr=0.1, weight_decay=1e-6)

    def step(v1, v2, autocast):
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        update_momentum(model.projection_head, model.projection_head_momentum, m=0.99)
        with autocast():
            p0, z0 = model(v1), model.forward_momentum(v1)
            p1, z1 = model(v2), model.forward_momentum(v2)
            loss = criterion(p0, z1) + criterion(p1, z0)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step, model


def byol_pytorch(arch: str, channels_last: bool) -> tuple[Callable, torch.nn.Module]:
    from byol_pytorch import BYOL

    net = getattr(torchvision.models, arch)()
    learner = BYOL(net, image_size=64, hidden_layer="avgpool", augment_fn=lambda x: x, augment_fn2=lambda x: x,
                   moving_average_decay=0.99, use_simplicial_embeddings=False).train()
    if channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9)

    def step(v1, v2, autocast):
        with autocast():
            loss = learner(v1)  # its augment_fn makes the two views; identity here (same compute)
        loss.backward()
        opt.step()
        opt.zero_grad()
        learner.update_moving_average()
        return loss

    return step, learner


# "ours" is what training/pretrain.py runs with its defaults: channels_last and fused views, in fp32 and bf16.
# lightly and byol-pytorch run as documented (channels_last given to them too under bf16, as before).
PEERS = {"ours": lambda arch, cl: ours(arch, True, fuse_views=True),
         "ours-per-view": lambda arch, cl: ours(arch, cl, fuse_views=False),
         "lightly": lightly_byol, "byol-pytorch": byol_pytorch}


def measure(names: list[str], arch: str, batch: int, size: int, precision: str, steps: int,
            warmup: int) -> dict[str, float]:
    """Build every implementation, then time them round-robin (one step each per round), so drift of the
    machine (thermal, other load) hits all of them alike."""
    steppers = {}
    for name in names:
        try:
            steppers[name] = PEERS[name](arch, precision == "bf16")[0]
        except ImportError as err:
            print(f"  {name:<13} skipped ({err}); pip install -e '.[bench]'")
    torch.manual_seed(0)
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    v1 = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    v2 = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    times: dict[str, list[float]] = {name: [] for name in steppers}
    for i in range(warmup + steps):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(v1, v2, autocast)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    results = {}
    for name, ts in times.items():
        results[name] = batch / statistics.median(ts)
        print(f"  {name:<13} {results[name]:7.2f} img/s  (median step {statistics.median(ts) * 1000:.0f} ms, "
              f"{steps} steps)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", help="torchvision ResNet (default resnet50)")
    parser.add_argument("--size", type=int, default=64, help="view resolution (default 64)")
    parser.add_argument("--batch", type=int, default=32, help="images per step; each has two views (default 32)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per implementation (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="fp32, and/or bf16 autocast with channels_last (default both)")
    parser.add_argument("--peers", nargs="+", default=["lightly", "byol-pytorch"],
                        choices=["lightly", "byol-pytorch", "ours-per-view"],
                        help="what to compare with; ours-per-view is this trainer with --no-fuse-views")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from hub.hardware import cpu_summary, native_bf16

    print(f"BYOL step, {args.arch} at {args.size}x{args.size}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"CPU: {cpu_summary()}")
    for precision in args.precision:
        if precision == "bf16" and not native_bf16():
            print("[bf16 + channels_last] skipped: this CPU has no native bf16 (emulated bf16 measured 7x slower "
                  "than fp32; the trainer uses fp32 here)")
            continue
        print(f"[{precision}{' + channels_last' if precision == 'bf16' else ''}]")
        results = measure(["ours", *args.peers], args.arch, args.batch, args.size, precision, args.steps,
                          args.warmup)
        for peer in args.peers:
            if results["ours"] and results.get(peer):
                print(f"  ratio ours / {peer}: {results['ours'] / results[peer]:.3f}x")


if __name__ == "__main__":
    main()
