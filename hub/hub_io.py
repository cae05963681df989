"""Where model folders come from and go to: local folders, the Hugging Face Hub and its cache.

``resolve_model`` is torch-free (the ONNX service uses it); ``HubIOMixin`` adds
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` to :class:`hub.BYOLModel`.
Only safetensors are read from a Hub repo: a pickle is never loaded from there.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.config import CARD_NAME, CONFIG_NAME, ONNX_INT8_NAME, ONNX_NAME, WEIGHTS_NAME, ModelConfig
from hub.errors import ModelNotFoundError, WeightsIntegrityError, WeightsMismatchError
from hub.interop import (
    PREPROCESSOR_NAME,
    PROCESSOR_NAME,
    TRANSFORMERS_DIR,
    TRANSFORMERS_FILES,
    preprocessor_config,
    processor_config,
    transformers_config,
    transformers_key,
    unsupported_reason,
)
from storage.files import sha256_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on local disk and what it is."""

    folder: Path
    model_id: str
    revision: str  # Hub commit sha, or "sha256:<12 hex>" of the weights for a local folder
    config: ModelConfig
    from_hub: bool


def _local_revision(folder: Path, config: ModelConfig) -> str:
    sha = config.weights_sha256
    if sha is None and (folder / WEIGHTS_NAME).exists():
        sha = sha256_file(folder / WEIGHTS_NAME)
    if sha is None and (folder / ONNX_NAME).exists():
        sha = config.onnx.get("weights_sha256") or sha256_file(folder / ONNX_NAME)
    return f"sha256:{sha[:12]}" if sha else "unknown"


def resolve_model(
    id_or_path: str | Path,
    *,
    files: Iterable[str] = (WEIGHTS_NAME,),
    optional_files: Iterable[str] = (CARD_NAME,),
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> ResolvedModel:
    """Find a model folder: an existing local folder, or a Hub repo id fetched into the HF cache.

    ``files`` must exist (besides ``config.json``); ``optional_files`` are fetched when present.
    With ``local_files_only`` (or ``HF_HUB_OFFLINE=1``) only the cache is used.
    """
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        config = ModelConfig.load(path)
        missing = [name for name in files if not (path / name).exists()]
        if missing:
            raise ModelNotFoundError(f"model folder {path} lacks {', '.join(missing)}")
        return ResolvedModel(path, config.name or path.name, _local_revision(path, config), config, False)
    repo_id = str(id_or_path)
    if path.exists() or repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"{repo_id!r} is neither a model folder (a directory with {CONFIG_NAME}) nor a Hub repo id 'org/name'"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    kwargs: dict[str, Any] = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                  token=token, library_name="byol-hub")

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(repo_id, name, **kwargs))

    try:
        config_path = fetch(CONFIG_NAME)
        for name in files:
            fetch(name)
    except LocalEntryNotFoundError as err:
        raise ModelNotFoundError(
            f"{repo_id} (revision {revision or 'main'}) is not in the local Hugging Face cache and the Hub "
            f"cannot be reached or was not allowed (local_files_only/HF_HUB_OFFLINE): {err}"
        ) from None
    except (EntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise ModelNotFoundError(f"cannot fetch {repo_id} (revision {revision or 'main'}): {err}") from None
    for name in optional_files:
        try:
            fetch(name)
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
            pass
    folder = config_path.parent
    config = ModelConfig.load(folder)
    return ResolvedModel(folder, repo_id, folder.name, config, True)


class HubIOMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a module with a ``config``."""

    config: ModelConfig
    source: dict[str, str]

    def save_pretrained(self, save_directory: str | Path, *, card: bool = True, onnx: bool = False,
                        transformers: bool = True, extra_results: list[dict[str, Any]] | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card.

        The folder loads in this project, in timm (``config.json`` carries timm's keys beside ours) and in
        transformers; ``transformers=True`` (the default) also writes the ``transformers/`` subfolder for
        transformers' own ``ResNetModel`` (renamed weights: it doubles the folder's size, ~94 MB for a
        ResNet-50). CIFAR-stem and ``tf_same`` models get neither (see ``hub.interop``).

        Files are written into a staging folder and moved in one by one, weights first, config
        (which records the weights' sha256) last: an interrupted save never leaves a config that
        points at other weights unnoticed. An existing README.md that this package did not
        write is kept, as ``huggingface_hub`` does.
        """
        from safetensors.torch import save_file

        from hub.card import is_generated_card, render_card

        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=target) as tmp:
            staging = Path(tmp)
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, staging / WEIGHTS_NAME, metadata={"format": "pt"})
            self.config.weights_sha256 = sha256_file(staging / WEIGHTS_NAME)
            onnx_matches = self.config.onnx.get("weights_sha256") == self.config.weights_sha256
            if onnx:
                from hub.export.onnx import export_onnx

                export_onnx(self, staging / ONNX_NAME)  # records opset/outputs in self.config.onnx
            elif not (onnx_matches and (target / ONNX_NAME).exists()):
                self.config.onnx = {}  # an ONNX graph made from other weights no longer belongs here
            self.config.transformers = {}
            if transformers and unsupported_reason(self.config) is None:
                self.config.transformers = write_transformers_folder(state, self.config, staging / TRANSFORMERS_DIR)
            self.config.save(staging)
            existing_card = target / CARD_NAME
            if card and (not existing_card.exists() or is_generated_card(existing_card.read_text())):
                (staging / CARD_NAME).write_text(render_card(self.config, target, extra_results))
            elif card:
                logger.info("keeping the hand-written %s in %s", CARD_NAME, target)
            for name in (WEIGHTS_NAME, ONNX_NAME, CARD_NAME):
                if (staging / name).exists():
                    (staging / name).replace(target / name)
            _replace_dir(staging / TRANSFORMERS_DIR, target / TRANSFORMERS_DIR)  # a stale one is removed
            (staging / CONFIG_NAME).replace(target / CONFIG_NAME)
        if not self.config.onnx:
            for stale in (ONNX_NAME, ONNX_INT8_NAME):
                (target / stale).unlink(missing_ok=True)
        elif onnx:
            (target / ONNX_INT8_NAME).unlink(missing_ok=True)  # quantized from the previous graph
        return target

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
        verify_sha256: bool = True,
    ) -> Any:
        """Load a model from a local folder or a Hub repo id (``"org/byol-r50-ep200"``).

        Loading is strict: a missing, unexpected or mis-shaped key raises
        :class:`hub.errors.WeightsMismatchError` naming the keys. The model is returned in eval mode.
        """
        from safetensors.torch import load_file

        resolved = resolve_model(model_id, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only, token=token)
        weights = resolved.folder / WEIGHTS_NAME
        if verify_sha256 and resolved.config.weights_sha256:
            actual = sha256_file(weights)
            if actual != resolved.config.weights_sha256:
                raise WeightsIntegrityError(WEIGHTS_NAME, actual, resolved.config.weights_sha256)
        if verify_sha256:
            check_transformers_folder(resolved.folder, resolved.config)
        model = cls(resolved.config)
        load_strict(model, load_file(weights, device=map_location))
        model.source = {"id": resolved.model_id, "revision": resolved.revision, "folder": str(resolved.folder)}
        return model.eval()

    def push_to_hub(self, repo_id: str, *, token: str | bool | None = None, private: bool | None = None,
                    revision: str | None = None, commit_message: str = "Upload BYOL model",
                    onnx: bool = True) -> str:
        """Save into a temporary folder and upload it as one commit; returns the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, onnx=onnx)
            return upload_folder(tmp, repo_id, token=token, private=private, revision=revision,
                                 commit_message=commit_message)


def upload_folder(folder: str | Path, repo_id: str, *, token: str | bool | None = None, private: bool | None = None,
                  revision: str | None = None, commit_message: str = "Upload BYOL model") -> str:
    """Upload a saved model folder (config, weights, card, ONNX) to the Hub in one commit."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    ModelConfig.load(folder)  # refuse to publish something that is not a model folder
    if not (folder / WEIGHTS_NAME).exists():
        raise ModelNotFoundError(f"{folder} has no {WEIGHTS_NAME}; nothing to push")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                             commit_message=commit_message,
                             allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, ONNX_NAME, ONNX_INT8_NAME,
                                             "results/*.json", f"{TRANSFORMERS_DIR}/*"])
    return str(getattr(info, "commit_url", info))


def write_transformers_folder(state: dict[str, torch.Tensor], config: ModelConfig, folder: Path) -> dict[str, Any]:
    """transformers' ``ResNetModel`` folder: config, renamed weights, image processor (in both of transformers'
    files, see :mod:`hub.interop`); returns the record
    (file sha256s) that our config keeps."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    renamed = {transformers_key(k): v for k, v in state.items()}
    save_file(renamed, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(transformers_config(config), indent=2) + "\n")
    (folder / PREPROCESSOR_NAME).write_text(json.dumps(preprocessor_config(config), indent=2) + "\n")
    (folder / PROCESSOR_NAME).write_text(json.dumps(processor_config(config), indent=2) + "\n")
    return {"subfolder": TRANSFORMERS_DIR, "model_class": "ResNetModel",
            "sha256": {name: sha256_file(folder / name) for name in TRANSFORMERS_FILES}}


def check_transformers_folder(folder: Path, config: ModelConfig) -> None:
    """The ``transformers/`` subfolder, when present, must be the one the config records."""
    sub = folder / TRANSFORMERS_DIR
    if not sub.is_dir():
        return
    recorded = config.transformers.get("sha256") or {}
    if not recorded:
        logger.warning("%s has a %s/ folder that config.json does not record; transformers would load weights this "
                       "package did not write there", folder, TRANSFORMERS_DIR)
        return
    for name, expected in recorded.items():
        path = sub / name
        if path.exists() and (actual := sha256_file(path)) != expected:
            raise WeightsIntegrityError(f"{TRANSFORMERS_DIR}/{name}", actual, expected)
    if not (sub / PROCESSOR_NAME).exists():
        logger.warning("%s/%s has no %s (written from this release on): from transformers 5.25 on, the pipeline "
                       "on this local folder preprocesses with default values (384 px, mean/std 0.5); re-save it "
                       "with BYOLModel.from_pretrained(folder).save_pretrained(folder)", folder, TRANSFORMERS_DIR,
                       PROCESSOR_NAME)


def _replace_dir(new: Path, old: Path) -> None:
    """Put ``new`` where ``old`` is (``old`` removed); with no ``new``, just remove ``old``."""
    import shutil

    if old.exists():
        trash = old.with_name(f".{old.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        old.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    if new.exists():
        new.rename(old)


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` or raise naming every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(missing, unexpected, mismatched)
    model.load_state_dict(state, strict=True)

