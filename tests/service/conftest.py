"""A model trained here (a short BYOL run on real photos) and in-process apps for both backends."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, photo_paths) -> Path:
    """ResNet-18 at 64x64 after a short BYOL run on scikit-image's photos, published with model.onnx."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "photos"
    data.mkdir()
    for i, path in enumerate(photo_paths):
        img = Image.open(path).convert("RGB")
        img.thumbnail((160, 160))
        img.save(data / f"{i}.jpg")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / f"{i}_flip.jpg")
        img.crop((0, 0, img.width * 3 // 4, img.height * 3 // 4)).save(data / f"{i}_crop.png")
    out = root / "run"
    proc = subprocess.run([sys.executable, str(REPO / "training" / "pretrain.py"), "--config", "smoke", "--data",
                           str(data), "--output", str(out), "--epochs", "3", "--batch-size-per-device", "4",
                           "--total-batch-size", "8", "--num-workers", "0", "--model-name", "org/byol-test"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "final"


def image_bytes(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photo_bytes(photos) -> list[bytes]:
    return [image_bytes(img, "JPEG", quality=92) for img in photos[:4]]


def make_client(model: Path, **settings) -> TestClient:
    from service.app import create_app
    from service.settings import ServiceSettings

    return TestClient(create_app(ServiceSettings(model=str(model), **settings)))


@pytest.fixture(scope="module")
def onnx_client(trained_model):
    with make_client(trained_model, backend="onnx", max_wait_ms=2) as client:
        yield client


@pytest.fixture(scope="module")
def torch_client(trained_model):
    with make_client(trained_model, backend="torch", max_wait_ms=2) as client:
        yield client


def float32_from_json_text(text: str, *path) -> np.ndarray:
    """The floats at ``path`` in a JSON response, parsed from their text as float32, after checking that each
    is written as float32 text (at most 9 significant digits; a float64 rendering takes 16-17)."""
    import json
    import re

    node = json.loads(text, parse_float=lambda token: token)
    for key in path:
        node = node[key]
    tokens = node if isinstance(node, list) else [node]
    for token in tokens:
        digits = re.sub(r"[eE].*$", "", str(token)).lstrip("-").replace(".", "").strip("0")
        assert len(digits) <= 9, f"{token} is not the shortest float32 text"
    return np.array([float(t) for t in tokens], dtype=np.float32)


@pytest.fixture(scope="session")
def emb(tmp_path_factory, trained_model) -> Path:
    """Copies of real photos embedded, indexed, deduplicated and scored: what a user serves with --index (made
    once for the page tests and the fuzzing)."""
    from benchmarks.curate import make_near_duplicate_fixture, photos_for_quality
    from service.embed.cli import main as embed_main
    from tests.conftest import skimage_data_dir

    root = tmp_path_factory.mktemp("ui")
    images = root / "images"
    make_near_duplicate_fixture(photos_for_quality(skimage_data_dir())[:5], images)
    (images / "broken.jpg").write_bytes(b"not an image")
    out = root / "emb"
    for argv in (["run", "--model", str(trained_model), "--input", str(images), "--output", str(out), "--no-progress"],
                 ["index", str(out)], ["dedup", str(out), "--no-progress"], ["outliers", str(out), "--no-progress"]):
        assert embed_main(argv) == 0, argv
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model, *extra: str) -> tuple[subprocess.Popen, str]:
    """``byol-serve`` as a real uvicorn process on a free loopback port, ready (``/ready`` 200). Its output goes
    to a file, ``proc.log``: a pipe that nobody reads fills up under a flood of access-log lines and stalls the
    server."""
    import tempfile
    import time

    import httpx

    from benchmarks import processes

    port = free_port()
    log = Path(tempfile.mkstemp(prefix="byol-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = processes.start([sys.executable, "-m", "service.cli", "--model", str(model), "--port", str(port),
                                "--max-wait-ms", "2", *extra], stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    processes.stop(proc)
    raise AssertionError("server did not become ready")
