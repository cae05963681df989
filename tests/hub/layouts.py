"""Build checkpoints in the peers' own layouts from a torchvision-named state dict.

Key names come from the peers' code (MMSelfSup/OpenMixup BYOL, solo-learn, lightly's BYOL example,
lucidrains' byol-pytorch, DeepMind's Haiku ResNet); no released file can be fetched here.
"""

from __future__ import annotations

import re

import numpy as np
import torch

SEQ_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def _noise_like(state):
    return {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}


def mmselfsup(sd, full=True):
    out = {f"backbone.{k}": v for k, v in sd.items()}
    if full:  # OpenMixup registers the backbone twice (online_net.0 is backbone) and keeps a target copy
        out.update({f"online_net.0.{k}": v for k, v in sd.items()})
        out.update({f"target_net.0.{k}": v for k, v in _noise_like(sd).items()})
        out.update({"neck.mlp.0.weight": torch.randn(16, 512), "neck.mlp.1.running_mean": torch.zeros(16),
                    "head.predictor.mlp.0.weight": torch.randn(16, 16), "target_net.1.mlp.0.weight": torch.randn(16, 512)})
    return {"meta": {"epoch": 200, "mmcv_version": "1.4.0"}, "state_dict": out}


def solo_learn(sd):
    state = {f"backbone.{k}": v for k, v in sd.items()}
    state.update({f"momentum_backbone.{k}": v for k, v in _noise_like(sd).items()})
    state.update({"projector.0.weight": torch.randn(16, 512), "projector.0.bias": torch.randn(16),
                  "momentum_projector.0.weight": torch.randn(16, 512), "predictor.0.weight": torch.randn(16, 16),
                  "classifier.weight": torch.randn(10, 512), "classifier.bias": torch.randn(10)})
    return {"epoch": 999, "global_step": 12345, "pytorch-lightning_version": "2.0.9", "state_dict": state,
            "hyper_parameters": {"method": "byol", "backbone": {"name": "resnet18"}}, "loops": {}}


def lightly(sd, fc=None):
    out = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        out[f"backbone.{SEQ_INDEX[head]}.{rest}"] = v
        out[f"backbone_momentum.{SEQ_INDEX[head]}.{rest}"] = v + 1 if v.is_floating_point() else v
    out.update({"projection_head.layers.0.weight": torch.randn(16, 512),
                "prediction_head.layers.0.weight": torch.randn(16, 16)})
    return out


def byol_pytorch(sd, fc):
    out = {f"net.{k}": v for k, v in {**sd, **fc}.items()}
    out.update({f"online_encoder.net.{k}": v for k, v in {**sd, **fc}.items()})
    out.update({"online_encoder.projector.net.0.weight": torch.randn(16, 512),
                "online_predictor.net.0.weight": torch.randn(16, 16)})
    return out


def _haiku_module(key: str) -> tuple[str, str]:
    module, leaf = key.rsplit(".", 1)
    if module == "conv1":
        name = "initial_conv"
    elif module == "bn1":
        name = "initial_batchnorm"
    else:
        m = re.match(r"layer(\d)\.(\d+)\.(.+)", module)
        group, block, sub = int(m[1]) - 1, m[2], m[3]
        sub = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_batchnorm"}.get(sub, sub)
        sub = re.sub(r"^conv(\d)$", lambda x: f"conv_{int(x[1]) - 1}", sub)
        sub = re.sub(r"^bn(\d)$", lambda x: f"batchnorm_{int(x[1]) - 1}", sub)
        name = f"block_group_{group}/~/block_{block}/~/{sub}"
    return f"res_net/~/{name}", leaf


def deepmind(sd):
    """{'step', 'experiment_state': {online/target params and state}} with Haiku names and HWIO weights."""
    params, state = {}, {}
    for key, value in sd.items():
        module, leaf = _haiku_module(key)
        arr = value.numpy()
        if leaf == "weight" and arr.ndim == 4:
            params.setdefault(module, {})["w"] = np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
        elif leaf in ("weight", "bias"):
            shape = (1, 1, 1, -1)
            params.setdefault(module, {})["scale" if leaf == "weight" else "offset"] = arr.reshape(shape)
        elif leaf in ("running_mean", "running_var"):
            ema = "mean_ema" if leaf == "running_mean" else "var_ema"
            state[f"{module}/~/{ema}"] = {"average": arr.reshape(1, 1, 1, -1), "counter": np.array(1000),
                                          "hidden": arr.reshape(1, 1, 1, -1)}
    target = {m: {k: v + 1.0 for k, v in leaves.items()} for m, leaves in params.items()}
    params["res_net/~/logits"] = {"w": np.zeros((512, 10), np.float32), "b": np.zeros(10, np.float32)}
    return {"step": 300000, "experiment_state": {
        "online_params": params, "target_params": target, "online_state": state, "target_state": state,
        "opt_state": [np.zeros(3, np.float32)]}}
