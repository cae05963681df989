"""The server as tests reach it: in-process (FastAPI's TestClient) or a real uvicorn process on loopback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient

from service.server.app import create_app
from service.server.settings import ServiceSettings
from tests.support import processes


def make_client(model: Path, **settings) -> TestClient:
    return TestClient(create_app(ServiceSettings(model=str(model), **settings)))


def float32_from_json_text(text: str, *path) -> np.ndarray:
    """The floats at ``path`` in a JSON response, parsed from their text as float32, after checking that each
    is written as float32 text (at most 9 significant digits; a float64 rendering takes 16-17)."""
    node = json.loads(text, parse_float=lambda token: token)
    for key in path:
        node = node[key]
    tokens = node if isinstance(node, list) else [node]
    for token in tokens:
        digits = re.sub(r"[eE].*$", "", str(token)).lstrip("-").replace(".", "").strip("0")
        assert len(digits) <= 9, f"{token} is not the shortest float32 text"
    return np.array([float(t) for t in tokens], dtype=np.float32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model, *extra: str) -> tuple[subprocess.Popen, str]:
    """``byol-serve`` as a real uvicorn process on a free loopback port, ready (``/ready`` 200). Its output goes
    to a file, ``proc.log``: a pipe that nobody reads fills up under a flood of access-log lines and stalls the
    server."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="byol-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = processes.start([sys.executable, "-m", "service.server.cli", "--model", str(model), "--port", str(port),
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


def read_response(sock: socket.socket) -> str:
    """One whole HTTP response from ``sock``: its head, then as many body bytes as its Content-Length says (they
    may come in a later segment than the head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode("latin-1")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")
