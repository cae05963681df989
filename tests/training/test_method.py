import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hub import ModelConfig
from training.augment import AugmentConfig, crop_box, sample_rng, two_views
from training.byol import BYOL, byol_loss, mlp, regression_loss
from training.lars import LARS, lars_param_groups
from training.schedules import lr_at, tau_at


def test_loss_sums_both_directions():
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(8, 16) for _ in range(4))
    expected = (2 - 2 * F.cosine_similarity(p1, z2)).mean() + (2 - 2 * F.cosine_similarity(p2, z1)).mean()
    assert torch.allclose(byol_loss(p1, p2, z1, z2), expected)
    assert regression_loss(z1, z1).abs() < 1e-6 and abs(regression_loss(z1, -z1) - 4) < 1e-5
    assert abs(byol_loss(z2, z1, z1, z2).item()) < 1e-5  # perfect predictions: 0, the sum of two zeros


def test_target_gets_no_gradient_and_moves_by_ema():
    model = BYOL(ModelConfig(architecture="resnet18"), 32, 16, 32)
    x = torch.randn(4, 3, 64, 64)
    loss, _ = model(x, x.flip(-1))
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert model.online.backbone.conv1.weight.grad is not None
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target.parameters()]
    model.update_target(0.99)
    for b, t, o in zip(before, model.target.parameters(), model.online.parameters()):
        assert torch.allclose(t, 0.99 * b + 0.01 * o, atol=1e-6)


def test_fused_views_are_the_same_method_as_one_forward_per_view():
    import copy

    from training.byol import set_bn_views

    torch.manual_seed(0)
    fused = BYOL(ModelConfig(architecture="resnet18"), 64, 32, 64, fuse_views=True)
    plain = copy.deepcopy(fused)
    plain.fuse_views = False
    set_bn_views(plain, 1)
    v1, v2 = torch.randn(6, 3, 64, 64), torch.randn(6, 3, 64, 64)
    (la, za), (lb, zb) = fused(v1, v2), plain(v1, v2)
    assert torch.allclose(la, lb, atol=1e-6) and torch.allclose(za, zb, atol=1e-5)
    la.backward()
    lb.backward()
    for p, q in zip(fused.online.parameters(), plain.online.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)
    for (name, x), y in zip(fused.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-6), name  # running stats updated per view, in order


def test_heads_follow_the_recipe():
    head = mlp(2048, 4096, 256)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].bias is not None and head[3].bias is None and head[3].out_features == 256


def test_tau_schedule_holds_then_follows_the_cosine_to_one():
    K = 1000
    assert tau_at(0, tau_base=0.99, total_steps=K, hold_fraction=0.05) == 0.99
    assert tau_at(49, tau_base=0.99, total_steps=K, hold_fraction=0.05) == 0.99
    assert tau_at(50, tau_base=0.99, total_steps=K, hold_fraction=0.05) == pytest.approx(0.99)
    mid = 50 + 475
    assert tau_at(mid, tau_base=0.99, total_steps=K, hold_fraction=0.05) == pytest.approx(0.995)
    assert tau_at(K, tau_base=0.99, total_steps=K, hold_fraction=0.05) == pytest.approx(1.0)
    k = 300
    formula = 1 - (1 - 0.99) * (math.cos(math.pi * k / K) + 1) / 2
    assert tau_at(k, tau_base=0.99, total_steps=K) == pytest.approx(formula)
    values = [tau_at(s, tau_base=0.99, total_steps=K, hold_fraction=0.05) for s in range(K + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_lr_schedule_warms_up_then_cosine_to_zero():
    kw = dict(peak_lr=4.8, warmup_steps=100, total_steps=1000)
    assert lr_at(0, **kw) == pytest.approx(0.048)
    assert lr_at(99, **kw) == pytest.approx(4.8)
    assert lr_at(100, **kw) == pytest.approx(4.8)
    assert lr_at(550, **kw) == pytest.approx(2.4)
    assert lr_at(1000, **kw) == pytest.approx(0.0, abs=1e-12)


def test_lars_matches_the_formula_and_excludes_biases_and_all_bn():
    import torchvision

    net = torchvision.models.resnet18()
    groups = lars_param_groups([net])
    names = {id(p): n for n, p in net.named_parameters()}
    excluded = {names[id(p)] for p in groups[1]["params"]}
    assert "layer2.0.downsample.1.weight" in excluded and "layer2.0.downsample.1.bias" in excluded
    assert "bn1.weight" in excluded and "fc.bias" in excluded
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in groups[0]["params"])

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(5))
    lr, m, wd, eta = 0.5, 0.9, 1e-2, 0.001
    opt = LARS([{"params": [w], "lars_exclude": False}, {"params": [b], "lars_exclude": True}],
               lr=lr, momentum=m, weight_decay=wd, eta=eta)
    w0, b0 = w.detach().clone(), b.detach().clone()
    bufs_w, bufs_b = torch.zeros_like(w0), torch.zeros_like(b0)
    for _ in range(2):
        w.grad, b.grad = torch.randn(5, 3), torch.randn(5)
        gw, gb = w.grad.clone(), b.grad.clone()
        trust = eta * w0.norm() / (gw.norm() + wd * w0.norm())
        bufs_w = m * bufs_w + trust * (gw + wd * w0)
        bufs_b = m * bufs_b + gb  # no weight decay, no trust ratio
        w0, b0 = w0 - lr * bufs_w, b0 - lr * bufs_b
        opt.step()
        assert torch.allclose(w, w0, atol=1e-6) and torch.allclose(b, b0, atol=1e-6)


def test_views_are_deterministic_per_sample_and_asymmetric(photos):
    cfg = AugmentConfig(size=64)
    a = two_views(photos[0], cfg, sample_rng(0, 3, 17))
    b = two_views(photos[0], cfg, sample_rng(0, 3, 17))
    c = two_views(photos[0], cfg, sample_rng(0, 4, 17))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    assert cfg.jitter == (0.4, 0.4, 0.2, 0.1) and cfg.jitter_prob == 0.8 and cfg.gray_prob == 0.2
    assert (cfg.view1.blur_prob, cfg.view2.blur_prob) == (1.0, 0.1)
    assert (cfg.view1.solarize_prob, cfg.view2.solarize_prob) == (0.0, 0.2)


def test_crop_box_follows_random_resized_crop():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        left, top, w, h = crop_box(rng, 400, 300, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left and left + w <= 400 and 0 <= top and top + h <= 300
        areas.append(w * h / (400 * 300))
    assert min(areas) >= 0.07 and max(areas) <= 1.0 and 0.3 < float(np.mean(areas)) < 0.7
