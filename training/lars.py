"""LARS (You et al., 2017), the textbook rule, vectorized with ``torch._foreach_*``.

For a weight ``w`` with gradient ``g``: ``local_lr = eta * ||w|| / (||g|| + wd * ||w||)`` (1 where a norm
is 0), ``d = local_lr * (g + wd * w)``, ``buf = momentum * buf + d``, ``w -= lr * buf``. The gradients are consumed: ``d`` is built in place in
``p.grad`` (call ``zero_grad`` after ``step`` as usual).
Parameters in a group with ``lars_exclude=True`` (biases and every BatchNorm parameter, including
ResNet's ``downsample.1``) get neither weight decay nor the trust ratio: plain SGD with momentum.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


def lars_param_groups(modules: Iterable[nn.Module]) -> list[dict]:
    """Split parameters: weights of convs/linears adapt; 1-d parameters (biases, all BN) are excluded.

    Excluding by dimensionality rather than by name catches every BN, ``downsample.1`` included,
    whatever the module is called.
    """
    adapt, exclude = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (exclude if param.ndim <= 1 else adapt).append(param)
    return [{"params": adapt, "lars_exclude": False}, {"params": exclude, "lars_exclude": True}]


class LARS(Optimizer):
    """LARS with momentum. ``eta`` is the trust coefficient (0.001 in the seed's configs)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, eta: float = 0.001):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid LARS settings lr={lr} momentum={momentum} weight_decay={weight_decay} eta={eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # The update is built in the gradient buffers themselves (they are consumed by this step):
            # one fewer pass over ~100 MB of memory per step on a ResNet-50.
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                wd, eta = group["weight_decay"], group["eta"]
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + wd * w_norm),
                                    torch.ones_like(w_norm))
                if wd:
                    torch._foreach_add_(grads, params, alpha=wd)
                torch._foreach_mul_(grads, trust.tolist())
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss
