"""The deployment, for real: build docker/Dockerfile, run the container, call /embed, compare numbers.

Needs a Docker engine (``source docker/engine.sh start`` sets one up where no registry is reachable);
skipped with the reason where none answers. ``BYOL_DOCKER_BASE`` overrides the image's BASE.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import REPO
from tests.support.server import free_port

pytestmark = pytest.mark.docker


def _docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def _engine_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    try:
        if _docker("info", timeout=20, check=False).returncode != 0:
            return "no Docker engine answers (run `source docker/engine.sh start` first)"
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = _engine_reason()
    if reason:
        pytest.skip(reason)
    tag = f"byol-serve-test:{uuid.uuid4().hex[:8]}"
    base = os.environ.get("BYOL_DOCKER_BASE", "python:3.11-slim")
    build = _docker("build", "--network", "host", "--build-arg", f"BASE={base}", "--build-arg", "FULL_TORCH=0",
                    "-f", "docker/Dockerfile", "-t", tag, str(REPO), check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield tag
    _docker("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A small model folder with model.onnx, readable by the container's non-root user."""
    import torch

    from hub import BYOLModel, ModelConfig
    from tests.support.models import randomize_bn

    root = Path(tmp_path_factory.mktemp("docker-model"))
    torch.manual_seed(0)
    model = BYOLModel(ModelConfig(architecture="resnet18", name="docker-test",
                                  preprocessing={"resize_size": 128, "crop_size": 112}))
    randomize_bn(model)
    folder = root / "m"
    model.save_pretrained(folder, onnx=True, transformers=False)
    _world_readable(root)
    return folder


def _world_readable(root: Path) -> None:
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="module")
def index_folder(model_folder, photos, tmp_path_factory):
    """Photos embedded by byol-embed and indexed (FAISS), for /search in the container."""
    from service.embed.cli import main

    root = Path(tmp_path_factory.mktemp("docker-index"))
    for i, img in enumerate(photos):
        img.save(root / f"photo{i}.png")
    out = root / "emb"
    assert main(["run", "--model", str(model_folder), "--input", str(root), "--output", str(out), "--no-progress"]) == 0
    assert main(["index", str(out)]) == 0
    _world_readable(root)
    return out


def test_image_is_torch_free_non_root_and_small(image):
    info = _docker("run", "--rm", "--network", "host", "--entrypoint", "python3", image, "-c",
                   "import importlib.util, os; print(importlib.util.find_spec('torch') is None, os.getuid())").stdout
    assert info.split() == ["True", "10001"]
    size = int(_docker("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())
    print(f"image size: {size / 2**20:.0f} MiB")
    assert size < 700 * 2**20
    health = _docker("image", "inspect", image, "--format", "{{json .Config.Healthcheck.Test}}").stdout
    assert "/ready" in health


def test_container_serves_the_same_numbers_as_the_local_server(image, model_folder, index_folder, photos):
    from fastapi.testclient import TestClient

    from service.server.app import create_app
    from service.server.settings import ServiceSettings
    from tests.support.images import image_bytes

    blob = image_bytes(photos[0], "JPEG", quality=92)
    port = free_port()
    name = f"byol-test-{uuid.uuid4().hex[:8]}"
    # the image binds 0.0.0.0 and states BYOL_ALLOW_NO_AUTH=false: without keys it refuses to start
    refused = _docker("run", "--rm", "--network", "host", "-e", f"BYOL_PORT={port}", image, check=False)
    assert refused.returncode == 2 and "refusing to start: no API keys" in refused.stderr, refused.stderr[-2000:]
    auth = {"Authorization": "Bearer test-key-0123"}
    _docker("run", "-d", "--name", name, "--network", "host", "-e", f"BYOL_PORT={port}", "-e", "BYOL_THREADS=2",
            "-e", 'BYOL_API_KEYS=["test-key-0123"]',
            "-v", f"{model_folder}:/models/default:ro", "-v", f"{index_folder}:/index:ro", "-e", "BYOL_INDEX=/index",
            image)
    try:
        deadline = time.time() + 120
        status = ""
        while time.time() < deadline:
            status = _docker("inspect", "--format", "{{.State.Health.Status}} {{.State.Status}}", name).stdout.strip()
            if status.startswith("healthy") or "exited" in status:
                break
            time.sleep(1)
        logs = _docker("logs", name, check=False)
        assert status.startswith("healthy"), (status, logs.stdout[-2000:], logs.stderr[-2000:])
        url = f"http://127.0.0.1:{port}"
        anonymous = httpx.post(url + "/embed?layers=avgpool", files=[("images", ("p.jpg", blob, "image/jpeg"))],
                               timeout=60)
        assert anonymous.status_code == 401, anonymous.text
        remote = httpx.post(url + "/embed?layers=feature3,avgpool&pooling=mhead",
                            files=[("images", ("p.jpg", blob, "image/jpeg"))], headers=auth, timeout=60)
        assert remote.status_code == 200, remote.text
        info = httpx.get(url + "/info", headers=auth).json()
        assert info["backend"] == "onnx" and info["search"]["count"] == len(photos)
        found = httpx.post(url + "/search?k=2", files={"image": ("p.jpg", blob, "image/jpeg")}, headers=auth,
                           timeout=60)
        assert found.status_code == 200 and found.json()["results"][0]["id"] == "photo0.png", found.text
        docs = httpx.get(url + "/docs").text  # offline docs: the assets come from the image, not a CDN
        assert "cdn." not in docs and httpx.get(url + "/docs-static/swagger-ui-bundle.js").status_code == 200
    finally:
        _docker("rm", "-f", name, check=False)
    with TestClient(create_app(ServiceSettings(model=str(model_folder)))) as client:
        local = client.post("/embed?layers=feature3,avgpool&pooling=mhead",
                            files=[("images", ("p.jpg", blob, "image/jpeg"))]).json()
    for layer in ("feature3", "avgpool"):
        a = np.array(remote.json()["data"][0]["embeddings"][layer])
        b = np.array(local["data"][0]["embeddings"][layer])
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max()), layer


def test_compose_file_validates():
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (Debian's package) is not installed")
    out = subprocess.run(["docker-compose", "-f", str(REPO / "docker" / "compose.yaml"), "config"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "healthcheck" in out.stdout and "unless-stopped" in out.stdout and "/models/default" in out.stdout
