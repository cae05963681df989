"""Where weights came from: release-name verification and the versions that made them."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

# OpenMMLab names released files NAME_YYYYMMDD-<first 8 hex of the file's sha256>.pth
_RELEASE_NAME = re.compile(r"^(?P<name>.+)_(?P<date>\d{8})-(?P<hash>[0-9a-f]{8})\.(?:pth|pt|ckpt)$")
KNOWN_RELEASES = {
    "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth": "MMSelfSup BYOL ResNet-50, 200 epochs, batch 4096",
}


def release_identity(filename: str, sha256: str) -> dict[str, Any]:
    """Check a file name's OpenMMLab hash suffix against the file's sha256.

    Returns ``{"release": str | None, "verified": bool, "statement": str}``; the statement is the
    sentence the model card prints.
    """
    match = _RELEASE_NAME.match(filename)
    if match is None:
        return {"release": None, "verified": False,
                "statement": f"Unverified: the source file `{filename}` carries no release hash to check "
                             f"against (sha256 {sha256[:16]}...)."}
    described = KNOWN_RELEASES.get(filename)
    label = f"`{filename}`" + (f" ({described})" if described else "")
    if sha256.startswith(match["hash"]):
        return {"release": filename, "verified": True,
                "statement": f"Verified: these weights are the release {label}; the file's sha256 starts with "
                             f"`{match['hash']}` as its name claims."}
    return {"release": None, "verified": False,
            "statement": f"Unverified: the source file is named like the release {label}, but its sha256 starts "
                         f"with `{sha256[:8]}`, not `{match['hash']}`; these are not (or not exactly) that "
                         "release's weights."}


def package_versions(names: tuple[str, ...] = ("torch", "torchvision", "accelerate", "huggingface-hub",
                                               "safetensors", "onnx", "onnxruntime")) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        versions["byol"] = importlib.metadata.version("byol")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


def git_commit() -> str | None:
    """The commit of this project's checkout, recorded with runs and results (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
