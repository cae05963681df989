"""The checkpoint layouts ``byol-hub convert`` reads: one table that the CLI, detection and extraction use.

Torch-free (the CLI lists the names without importing torch). Each layout says where the backbone lives in
the state dict and how to recognise it from the key names; detection tries the table in order, so more
specific layouts come first. ``deepmind`` is recognised from the pickle's Haiku structure, not from keys.

    >>> detect_layout({"online_encoder.net.conv1.weight", "online_encoder.net.layer1.0.conv1.weight"}).name
    'byol-pytorch'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


def _under(keys: Iterable[str], prefix: str) -> set[str]:
    return {k[len(prefix):] for k in keys if k.startswith(prefix)}


def is_torchvision(keys: set[str]) -> bool:
    """torchvision ResNet names: ``conv1.weight``, ``layer1.0.conv1.weight``, ..."""
    return "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys)


def is_sequential(keys: set[str]) -> bool:
    """``nn.Sequential(*resnet.children()[:-1])`` names: ``0.weight`` (conv1), ``4.0.conv1.weight`` (layer1)."""
    return "0.weight" in keys and any(k.startswith("4.0.") for k in keys)


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    prefix: str  # where the backbone lives ("" = top level); a plain extracted backbone is accepted too
    reads: str  # one line for --help and the README
    detect: Callable[[set[str]], bool] | None = None  # on the state dict's keys (``module.`` removed)


LAYOUTS: tuple[CheckpointLayout, ...] = (
    CheckpointLayout("deepmind", "", "the released BYOL pickle (Haiku names); the online network"),
    CheckpointLayout("solo-learn", "backbone.", "Lightning .ckpt: backbone.* beside momentum_backbone.*, projector.*",
                     lambda keys: any(k.startswith("momentum_backbone.") for k in keys)),
    CheckpointLayout("byol-pytorch", "online_encoder.net.", "BYOL(resnet) state dicts (online_encoder.net.*)",
                     lambda keys: any(k.startswith("online_encoder.net.") for k in keys)),
    CheckpointLayout("lightly", "backbone.", "backbone = nn.Sequential(*resnet.children()[:-1]) (backbone.0.weight, ...)",
                     lambda keys: is_sequential(_under(keys, "backbone.")) or
                     (is_sequential(keys) and not is_torchvision(keys))),
    CheckpointLayout("mmselfsup", "backbone.", "state_dict with backbone.* beside neck.*, head.*, target_net.*",
                     lambda keys: bool(_under(keys, "backbone."))),
    CheckpointLayout("openmixup", "backbone.", "as mmselfsup (OpenMixup's BYOL configs)"),
    CheckpointLayout("torchvision", "", "plain ResNet state dicts (fc dropped)", is_torchvision),
    CheckpointLayout("timm", "", "plain ResNet state dicts, timm's names are torchvision's (fc dropped)"),
)
BY_NAME = {layout.name: layout for layout in LAYOUTS}
SOURCES = ("auto", *BY_NAME)


def layout(name: str) -> CheckpointLayout:
    from hub.errors import CheckpointFormatError

    if name not in BY_NAME:
        raise CheckpointFormatError(f"unknown source {name!r}; accepted: {', '.join(SOURCES)}")
    return BY_NAME[name]


def detect_layout(keys: set[str]) -> CheckpointLayout | None:
    """The first layout in the table whose key test matches (``None`` if none does)."""
    return next((entry for entry in LAYOUTS if entry.detect is not None and entry.detect(keys)), None)


def key_prefixes(keys: Iterable[str]) -> list[str]:
    return sorted({k.split(".")[0] + "." for k in keys})
