"""Converters from the checkpoints people already have to a :class:`hub.BYOLModel`.

Supported layouts (key names from the peers' own code; no released file could be fetched here to
verify against, so each converter is proven on checkpoints built in the same layout):

- ``mmselfsup`` / ``openmixup``: ``{"state_dict": {"backbone.conv1.weight", ..., "neck.*", "head.*",
  "online_net.0.*", "target_net.*"}, "meta": ...}``, or a plain extracted backbone.
- ``solo-learn``: Lightning ``.ckpt`` with ``backbone.*`` beside ``momentum_backbone.*``,
  ``projector.*``, ``predictor.*``, ``classifier.*``.
- ``lightly``: ``backbone = nn.Sequential(*resnet.children()[:-1])`` (``backbone.0.weight``,
  ``backbone.4.0.conv1.weight``, ...).
- ``byol-pytorch``: ``BYOL(resnet)`` state dicts (``online_encoder.net.*``) or the wrapped net's own keys.
- ``torchvision`` / ``timm``: plain ResNet state dicts (``fc`` dropped).
- ``deepmind``: the released BYOL pickle (Haiku names); the online network is taken.

Every torch checkpoint is read with ``torch.load(weights_only=True)``; the DeepMind pickle with a
restricted unpickler that admits numpy arrays and plain containers only.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hub.config import ModelConfig
from hub.convert.layouts import SOURCES, detect_layout, is_sequential, key_prefixes, layout
from hub.errors import CheckpointFormatError
from hub.layers import ARCHS
from hub.provenance import package_versions, release_identity
from storage.files import sha256_file

logger = logging.getLogger(__name__)

_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_CONTAINERS = ("state_dict", "model", "module", "params", "net")


# ----------------------------------------------------------------------------------------------------------------
# Reading files safely


class _Record:
    """Stand-in for a class in a DeepMind pickle (e.g. the experiment-state NamedTuple): keeps its fields."""

    def __new__(cls, *args: Any) -> _Record:
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays/scalars/dtypes and plain containers; other classes of the BYOL/Haiku/JAX
    packages become inert :class:`_Record` objects; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }
    _RECORD_PACKAGES = ("byol", "haiku", "jax", "optax")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module.split(".")[0] in self._RECORD_PACKAGES:
            return type(name, (_Record,), {"__module__": "hub.convert._records"})
        raise CheckpointFormatError(
            f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are admitted from a "
            "non-torch pickle"
        )


def read_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint without executing arbitrary code: ``torch.load(weights_only=True)``, then the
    numpy-only unpickler for JAX/Haiku pickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as torch_err:
        data = path.read_bytes()
        try:
            return _NumpyOnlyUnpickler(io.BytesIO(data)).load()
        except CheckpointFormatError as err:
            raise CheckpointFormatError(
                f"{path.name}: torch.load(weights_only=True) refused it ({str(torch_err).splitlines()[0]}) and {err}"
            ) from None
        except Exception as err:
            raise CheckpointFormatError(f"{path.name} is neither a torch checkpoint nor a numpy pickle: {err}") from None
    except Exception as err:
        raise CheckpointFormatError(f"cannot read {path.name} as a checkpoint: {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# Layout detection


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The flat ``{name: tensor}`` mapping inside a checkpoint (``state_dict``/``model``/... or itself)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in _CONTAINERS:
            if key in obj:
                found = _tensor_dict(obj[key])
                if found is not None:
                    return found
    return None


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def detect_source(obj: Any) -> str:
    """Name the layout of a loaded checkpoint (from :data:`hub.convert.layouts.LAYOUTS`), or raise listing
    what was found."""
    if _find_haiku_params(obj) is not None:
        return "deepmind"
    state = _tensor_dict(obj)
    if state is None:
        kind = type(obj).__name__
        keys = list(obj)[:10] if isinstance(obj, Mapping) else []
        raise CheckpointFormatError(f"no tensor state dict found (top level: {kind} with keys {keys}); "
                                    f"known layouts: {', '.join(SOURCES[1:])}")
    keys = {k.removeprefix("module.") for k in state}
    found = detect_layout(keys)
    if found is None:
        raise CheckpointFormatError(
            f"unknown checkpoint layout: {len(keys)} tensors under prefixes {key_prefixes(sorted(keys))[:12]}; "
            "expected torchvision ResNet names (conv1.weight, layer1.0...), optionally under backbone./"
            "online_encoder.net.; for another wrapper pass --prefix (e.g. --prefix net.), or --source"
        )
    return found.name


# ----------------------------------------------------------------------------------------------------------------
# Extraction to torchvision names


def _remap_sequential(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in _SEQUENTIAL:
            out[f"{_SEQUENTIAL[head]}.{rest}"] = value
    return out


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, renamed without it; none there is an error listing the prefixes seen."""
    stripped = _strip(state, prefix)
    if not stripped:
        raise CheckpointFormatError(f"no key starts with prefix {prefix!r}; prefixes found: "
                                    f"{key_prefixes(sorted(state))[:12]}")
    return stripped


def extract_backbone(obj: Any, source: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Torchvision-named backbone tensors (no ``fc``) from a loaded checkpoint of ``source``."""
    if source == "deepmind":
        return _haiku_to_torchvision(obj)
    state = _tensor_dict(obj)
    if state is None:
        raise CheckpointFormatError(f"no tensor state dict found in this {source} checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if prefix is None:
        prefix = layout(source).prefix
        if prefix and not any(k.startswith(prefix) for k in state):
            prefix = ""  # a plain extracted backbone of that source
    if prefix:
        state = strip_prefix(state, prefix)
    if is_sequential(set(state)):
        state = _remap_sequential(state)
    dropped = sorted(k for k in state if k.startswith("fc."))
    if dropped:
        logger.info("dropping the classifier (%s)", ", ".join(dropped))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    for key in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0, dtype=torch.long))
    return state


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``(architecture, stem)`` from a torchvision-named state dict."""
    if "conv1.weight" not in state:
        raise CheckpointFormatError("no conv1.weight: not a ResNet backbone in torchvision naming")
    stem = "cifar" if tuple(state["conv1.weight"].shape[-2:]) == (3, 3) else "imagenet"
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    for name, spec in ARCHS.items():
        if spec.block == block and spec.depths == depths:
            return name, stem
    raise CheckpointFormatError(f"a {block} ResNet with blocks {depths} per stage is not one of {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------------------------------------------
# DeepMind (Haiku) pickles

_HAIKU_CONV = re.compile(r"^block_group_(?P<g>\d+)/~/block_(?P<b>\d+)/~/(?P<name>\w+?)(?P<k>_\d+)?$")


def _walk(obj: Any, depth: int = 0) -> Iterator[tuple[str | None, Any]]:
    """Depth-first (key, value) pairs, with mapping keys named so 'online_*' can be preferred."""
    if depth > 8:
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield str(key), value
            yield from _walk(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield None, value
            yield from _walk(value, depth + 1)
    elif isinstance(obj, _Record):
        for value in (*obj.args, getattr(obj, "state", None)):
            if value is not None:
                yield None, value
                yield from _walk(value, depth + 1)


def _is_haiku(mapping: Any, leaf: str) -> bool:
    return isinstance(mapping, Mapping) and any(
        str(k).endswith(leaf) and isinstance(v, Mapping) for k, v in mapping.items())


def _find_haiku_params(obj: Any) -> tuple[dict, dict | None] | None:
    """The online network's (params, state) Haiku mappings; online before target, by name or order."""
    if isinstance(obj, Mapping) and _is_haiku(obj, "initial_conv"):
        return dict(obj), None
    params = state = None
    for key, value in _walk(obj):
        if key is not None and "target" in key:
            continue
        if params is None and _is_haiku(value, "initial_conv"):
            params = value
        elif state is None and _is_haiku(value, "mean_ema"):
            state = value
        if params is not None and state is not None:
            break
    return (params, state) if params is not None else None


def _haiku_to_torchvision(obj: Any) -> dict[str, torch.Tensor]:
    found = _find_haiku_params(obj)
    if found is None:
        raise CheckpointFormatError("no Haiku ResNet parameters (…/initial_conv) found in this pickle")
    params, state = found
    if state is None:
        raise CheckpointFormatError("the pickle has Haiku parameters but no BatchNorm statistics (…/mean_ema)")

    def module_name(path: str) -> str:
        for anchor in ("initial_conv", "initial_batchnorm", "block_group_"):
            if anchor in path:
                path = path[path.index(anchor):]
                break
        if path in ("initial_conv", "initial_batchnorm"):
            return {"initial_conv": "conv1", "initial_batchnorm": "bn1"}[path]
        match = _HAIKU_CONV.match(path)
        if match is None:
            raise CheckpointFormatError(f"unexpected Haiku module {path!r}")
        g, b, name, k = int(match["g"]), match["b"], match["name"], match["k"]
        stage = f"layer{g + 1}.{b}."
        if name == "shortcut_conv":
            return stage + "downsample.0"
        if name == "shortcut_batchnorm":
            return stage + "downsample.1"
        index = int(k[1:]) + 1
        return stage + (f"conv{index}" if name == "conv" else f"bn{index}")

    out: dict[str, torch.Tensor] = {}
    for path, leaves in params.items():
        if "/~/logits" in str(path) or not isinstance(leaves, Mapping):
            continue
        target = module_name(str(path))
        for leaf, array in leaves.items():
            array = np.asarray(array, dtype=np.float32)
            if leaf == "w":
                out[f"{target}.weight"] = torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1)))
            elif leaf in ("scale", "offset"):
                out[f"{target}.{'weight' if leaf == 'scale' else 'bias'}"] = torch.from_numpy(array.reshape(-1).copy())
    for path, leaves in state.items():
        path = str(path)
        if not (path.endswith("/~/mean_ema") or path.endswith("/~/var_ema")):
            continue
        module, stat = path.rsplit("/~/", 1)
        target = module_name(module)
        array = np.asarray(leaves["average"], dtype=np.float32).reshape(-1).copy()
        out[f"{target}.{'running_mean' if stat == 'mean_ema' else 'running_var'}"] = torch.from_numpy(array)
        out[f"{target}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The whole conversion


def convert_checkpoint(path: str | Path, *, source: str = "auto", prefix: str | None = None, zoo: str | None = None,
                       name: str | None = None, padding: str | None = None) -> Any:
    """Read ``path``, build a :class:`hub.BYOLModel` with the backbone's weights and the provenance.

    ``padding``: for ``deepmind`` the default is ``tf_same`` (Haiku's asymmetric 'SAME', exact);
    ``torch`` gives torchvision's symmetric padding (portable, drifts slightly; see the docs).
    """
    from hub.hub_io import load_strict
    from hub.model import BYOLModel

    if source != "auto":
        layout(source)  # refuse an unknown name before reading anything
    path = Path(path)
    obj = read_checkpoint(path)
    if prefix and source == "auto":
        # a given prefix is stripped before detection: what is under it is then recognised on its own
        state = _tensor_dict(obj)
        if state is None:
            raise CheckpointFormatError(f"--prefix {prefix!r}: no tensor state dict found in {path.name}")
        obj, prefix = strip_prefix({k.removeprefix("module."): v for k, v in state.items()}, prefix), None
    detected = detect_source(obj) if source == "auto" else source
    if source == "auto":
        logger.info("detected checkpoint layout: %s", detected)
    state = extract_backbone(obj, detected, prefix)
    architecture, stem = infer_architecture(state)
    sha = sha256_file(path)
    identity = release_identity(path.name, sha)
    provenance = {"source_file": path.name, "source_sha256": sha, "source_format": detected,
                  "detected": source == "auto", "identity": identity["statement"],
                  "verified_release": identity["release"], "package_versions": package_versions()}
    config = ModelConfig(architecture=architecture, stem=stem, name=name, zoo=zoo, provenance=provenance,
                         padding=padding or ("tf_same" if detected == "deepmind" else "torch"))
    if zoo:
        from hub.zoo import zoo_entry

        entry = zoo_entry(zoo)
        provenance.update({"training_config": entry.config_name, "epochs": entry.epochs})
        if architecture != entry.recipe["architecture"]:
            raise CheckpointFormatError(f"zoo entry {zoo} is a {entry.recipe['architecture']} but the checkpoint "
                                        f"holds a {architecture}")
    model = BYOLModel(config)
    load_strict(model, state)
    return model.eval()
