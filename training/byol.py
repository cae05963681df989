"""The BYOL method: online network (encoder, projector, predictor), target network, loss, EMA.

The encoder is :class:`hub.BYOLModel`, so what gets published is exactly the online encoder.

Target BatchNorm: the target network runs in train mode and normalizes with its own batch
statistics, as in DeepMind's implementation; EMA moves only its *parameters*. Its running
statistics are its own (never copied from the online network) and are never used for training;
the published model carries the online network's running statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hub import BYOLModel, ModelConfig


class _PerView:
    """BatchNorm that normalizes each of ``views`` equal chunks of the batch with its own statistics.

    Running both views as one batch through the convolutions is faster on CPU (bf16: ~16 % on a
    ResNet-50 step), while per-chunk BatchNorm keeps the method exactly as with one forward per view:
    each view is normalized by its own batch statistics, and running statistics are updated once per
    view, in order.
    """

    views: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.views == 1 or not self.training:
            return super().forward(x)
        return torch.cat([super(_PerView, self).forward(chunk) for chunk in x.chunk(self.views)])


class PerViewBatchNorm1d(_PerView, nn.BatchNorm1d):
    pass


class PerViewBatchNorm2d(_PerView, nn.BatchNorm2d):
    pass


def set_bn_views(module: nn.Module, views: int) -> None:
    """Make every BatchNorm in ``module`` normalize ``views`` chunks separately (1 = ordinary BN)."""
    for m in module.modules():
        if type(m) in (nn.BatchNorm1d, PerViewBatchNorm1d):
            m.__class__ = PerViewBatchNorm1d
        elif type(m) in (nn.BatchNorm2d, PerViewBatchNorm2d):
            m.__class__ = PerViewBatchNorm2d
        else:
            continue
        m.views = views


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear (bias) -> BN -> ReLU -> Linear (no bias): the seed's projector and predictor block."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim, bias=False))


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """``2 - 2 cos(p, z)`` per sample, averaged over the batch. ``p``, ``z``: ``(B, D)``."""
    return (2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Both directions **summed**: view 1 predicts the target of view 2 and vice versa."""
    return regression_loss(p1, z2) + regression_loss(p2, z1)


class Encoder(nn.Module):
    """Backbone + projector: ``(B, 3, H, W) -> (B, projector_out)``."""

    def __init__(self, backbone: BYOLModel, projector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


class BYOL(nn.Module):
    """Online encoder + predictor; the target encoder is a frozen EMA copy kept beside it.

    ``forward(v1, v2)`` returns ``(loss, z1)``. BatchNorm statistics are per view, as in the reference
    implementations: with ``fuse_views`` both views run as one batch through per-view BatchNorm
    (identical method, faster), otherwise one forward per view (needed with SyncBatchNorm).
    """

    def __init__(self, config: ModelConfig, projector_hidden: int = 4096, projector_out: int = 256,
                 predictor_hidden: int = 4096, fuse_views: bool = True) -> None:
        super().__init__()
        backbone = BYOLModel(config)
        backbone.train()
        self.online = Encoder(backbone, mlp(config.num_features, projector_hidden, projector_out))
        self.predictor = mlp(projector_out, predictor_hidden, projector_out)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.fuse_views = fuse_views
        set_bn_views(self, 2 if fuse_views else 1)

    def forward(self, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
        if self.fuse_views:
            both = torch.cat([v1, v2])
            z1, z2 = self.online(both).chunk(2)
            p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
            with torch.no_grad():
                t1, t2 = self.target(both).chunk(2)
        else:
            z1, z2 = self.online(v1), self.online(v2)
            p1, p2 = self.predictor(z1), self.predictor(z2)
            with torch.no_grad():
                t1, t2 = self.target(v1), self.target(v2)
        return byol_loss(p1, p2, t1, t2), z1

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """``target = tau * target + (1 - tau) * online`` on parameters, in one vectorized call."""
        online = [p.detach() for p in self.online.parameters()]
        target = [p for p in self.target.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - tau)


def projection_std(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalized projections: ~1/sqrt(D) when healthy, 0 when collapsed."""
    return float(F.normalize(z.detach().float(), dim=-1).std(dim=0).mean())
