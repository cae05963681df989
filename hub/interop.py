"""What makes a model folder load natively in timm and transformers, beside this project's own loader.

One folder, three loaders, no ``trust_remote_code``:

- **timm** reads the root ``config.json``. When it holds ``pretrained_cfg``, timm takes only ``architecture``,
  ``num_classes``, ``model_args`` and ``pretrained_cfg`` from it and ignores our other keys (without
  ``pretrained_cfg`` it would read the whole file as its own config and fail on ours). timm loads
  ``model.safetensors``, whose names are torchvision's, which are timm's ResNet names. ``num_classes: 0`` and
  ``classifier: "fc"`` let ``timm.create_model(..., num_classes=10)`` drop the (absent) head and start a new one.
- **transformers** sees a root config with ``pretrained_cfg`` and no ``model_type`` as a timm model and builds
  ``TimmWrapperModel`` (``AutoModel.from_pretrained``). Its own ``ResNetModel`` loads the ``transformers/``
  subfolder: a ``ResNetConfig``, the weights renamed to its keys, and our preprocessing as a
  ``BitImageProcessor`` (resize the shorter side, center crop, rescale, normalize: every value spelled out) in
  two files that say the same: ``processor_config.json`` (nested under ``image_processor``), which every
  transformers 5 release reads first, and ``preprocessor_config.json`` for older readers. The nested file is
  what keeps the pipeline right on a local folder from transformers 5.25 on: there a root ``config.json`` with
  ``pretrained_cfg`` (ours) makes ``AutoImageProcessor.from_pretrained(root, subfolder=...)`` read the subfolder's
  ``config.json`` instead of ``preprocessor_config.json``, and fall back to the defaults (384 px, mean/std 0.5).
- **this project** (``BYOLModel.from_pretrained``) reads its own fields, checks that the timm keys agree with
  them, and checks the subfolder's weights against the sha256 its config records.

Only the ImageNet stem with torchvision padding can be expressed: a CIFAR stem (3x3 conv, no max-pool) or
Haiku 'SAME' padding (``tf_same``) is neither timm's nor transformers' ResNet, and such folders carry neither
the timm keys nor the subfolder (:func:`unsupported_reason` says why, and the card repeats it).
"""

from __future__ import annotations

import re
from typing import Any

from hub.errors import ConfigError
from hub.layers import ARCHS

TIMM_KEYS = ("num_classes", "num_features", "pretrained_cfg")  # the root keys we write for timm
TRANSFORMERS_DIR = "transformers"
PREPROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"
TRANSFORMERS_FILES = ("config.json", "model.safetensors", PREPROCESSOR_NAME, PROCESSOR_NAME)
PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def unsupported_reason(config: Any) -> str | None:
    """Why timm and transformers cannot load this model natively, or ``None`` when they can."""
    if config.stem != "imagenet":
        return ("its CIFAR stem (3x3 conv, no max-pool) is not timm's or transformers' ResNet stem; load it with "
                "BYOLModel.from_pretrained or serve its model.onnx")
    if config.padding != "torch":
        return ("its Haiku 'SAME' padding (tf_same) is not expressible in timm's or transformers' ResNet; re-convert "
                "with `--padding torch` to accept the documented drift, or load it with BYOLModel.from_pretrained")
    return None


def crop_pct(resize: int, crop: int) -> float:
    """``crop / resize``, nudged down where float rounding would make ``int(crop / crop_pct)`` one short of
    ``resize`` (timm and transformers both recover the resize that way)."""
    pct = crop / resize
    while int(crop / pct) < resize:
        pct -= 1e-12
    return pct


def timm_keys(config: Any) -> dict[str, Any]:
    """The root keys timm reads (empty when timm cannot express the model)."""
    if unsupported_reason(config) is not None:
        return {}
    pre = config.preprocessing
    return {
        "num_classes": 0,
        "num_features": config.num_features,
        "pretrained_cfg": {
            "tag": "byol",
            "input_size": [3, pre.crop_size, pre.crop_size],
            "interpolation": pre.interpolation,
            "crop_pct": crop_pct(pre.resize_size, pre.crop_size),
            "crop_mode": "center",
            "mean": list(pre.mean),
            "std": list(pre.std),
            "num_classes": 0,
            "pool_size": [max(pre.crop_size // 32, 1)] * 2,
            "first_conv": "conv1",
            "classifier": "fc",
            "license": config.license,
        },
    }


def check_timm_keys(data: dict[str, Any], config: Any) -> None:
    """Refuse a config whose timm keys disagree with our own fields (someone edited one side only)."""
    present = [k for k in TIMM_KEYS if k in data]
    if not present:
        return
    expected = timm_keys(config)
    if not expected:
        raise ConfigError(f"config.json carries timm keys {present} but the model cannot be loaded by timm: "
                          f"{unsupported_reason(config)}")
    mine, theirs = expected["pretrained_cfg"], data.get("pretrained_cfg") or {}
    diffs = [f"{key}: timm says {theirs.get(key)!r}, config says {mine[key]!r}"
             for key in ("input_size", "interpolation", "mean", "std") if list_or(theirs.get(key)) != list_or(mine[key])]
    if "crop_pct" in theirs and abs(float(theirs["crop_pct"]) - mine["crop_pct"]) > 1e-6:
        diffs.append(f"crop_pct: timm says {theirs['crop_pct']!r}, config says {mine['crop_pct']!r}")
    for key in ("num_classes", "num_features"):
        if key in data and data[key] != expected[key]:
            diffs.append(f"{key}: {data[key]!r} (expected {expected[key]!r})")
    if diffs:
        raise ConfigError("config.json's timm keys disagree with its own fields (" + "; ".join(diffs) + "); save the "
                          "model again to rewrite both")


def list_or(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------------------------------------
# transformers' own ResNet (ResNetModel), in the transformers/ subfolder

_LAYER = re.compile(r"^layer(?P<i>\d)\.(?P<j>\d+)\.(?P<rest>.+)$")
_PART = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def transformers_key(key: str) -> str:
    """torchvision ResNet name -> transformers ``ResNetModel`` name.

    >>> transformers_key("layer2.0.downsample.1.running_var")
    'encoder.stages.1.layers.0.shortcut.normalization.running_var'
    >>> transformers_key("layer1.2.conv3.weight")
    'encoder.stages.0.layers.2.layer.2.convolution.weight'
    """
    module, _, leaf = key.rpartition(".")
    if leaf not in _PART:
        raise ConfigError(f"unexpected tensor name {key!r}")
    if module == "conv1":
        return f"embedder.embedder.convolution.{leaf}"
    if module == "bn1":
        return f"embedder.embedder.normalization.{leaf}"
    match = _LAYER.match(module)
    if match is None:
        raise ConfigError(f"no transformers name for {key!r}")
    stage, block, rest = int(match["i"]) - 1, match["j"], match["rest"]
    prefix = f"encoder.stages.{stage}.layers.{block}."
    if rest == "downsample.0":
        return f"{prefix}shortcut.convolution.{leaf}"
    if rest == "downsample.1":
        return f"{prefix}shortcut.normalization.{leaf}"
    kind, index = rest[:-1], int(rest[-1])
    part = {"conv": "convolution", "bn": "normalization"}.get(kind)
    if part is None:
        raise ConfigError(f"no transformers name for {key!r}")
    return f"{prefix}layer.{index - 1}.{part}.{leaf}"


def transformers_config(config: Any) -> dict[str, Any]:
    spec = ARCHS[config.architecture]
    return {
        "model_type": "resnet",
        "architectures": ["ResNetModel"],
        "num_channels": 3,
        "embedding_size": 64,
        "hidden_sizes": list(spec.channels[1:]),
        "depths": list(spec.depths),
        "layer_type": spec.block,
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
        "out_features": ["stage4"],
        "out_indices": [4],
        "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"],
    }


def preprocessor_config(config: Any) -> dict[str, Any]:
    """``BitImageProcessor`` with every value spelled out, so that no default of any transformers release enters:
    resize the shorter side to ``resize_size`` (the longer side keeps the aspect ratio, rounded down as
    torchvision does), center crop ``crop_size``, rescale to [0, 1], normalize, as our preprocessing does."""
    pre = config.preprocessing
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": pre.resize_size},
        "resample": PIL_RESAMPLE[pre.interpolation],
        "do_center_crop": True,
        "crop_size": {"height": pre.crop_size, "width": pre.crop_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "do_convert_rgb": True,
    }


def processor_config(config: Any) -> dict[str, Any]:
    """transformers' nested processor file: the same image processor under ``image_processor``."""
    return {"image_processor": preprocessor_config(config)}
