"""How a real ``byol-serve`` process frames what it refuses, attacked with raw sockets on loopback: a body whose
length is announced twice (``Content-Length`` beside ``Transfer-Encoding: chunked``) on both of uvicorn's
parsers, and refusals (a full server, a server draining after SIGTERM) sent while the client is still uploading.
Every client must read its status code: none may get a reset where an answer was due."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import processes
from tests.support.images import image_bytes
from tests.support.server import read_response, start_server

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # uploads timed against a draining server: alone


def _jpeg(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels), "JPEG", quality=90)


def _multipart(images: list[bytes]) -> bytes:
    parts = [b'--b\r\nContent-Disposition: form-data; name="images"; filename="%d.jpg"\r\nContent-Type: image/jpeg'
             b"\r\n\r\n" % i + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + b"--b--\r\n"


def _head(length: int, extra: bytes = b"") -> bytes:
    return (b"POST /embed?layers=avgpool HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\n" % length + extra + b"\r\n")


def _answer(sock: socket.socket) -> tuple[int, str]:
    """The status code and head of the response on ``sock`` (its body read by its Content-Length); then the
    connection must end as the server said (an orderly close, or open for the next request). A reset anywhere
    raises: that is what a client sees where an answer was due."""
    response = read_response(sock)
    if not response.startswith("HTTP/1.1 "):
        raise ConnectionAbortedError(f"closed without an answer (after {response[:200]!r})")
    text = response.partition("\r\n\r\n")[0].lower()
    status = int(text.split(" ", 2)[1])
    if "connection: close" in text or status == 503:
        sock.settimeout(10)  # a refusal before the body: the connection ends after it (a timeout if it does not),
        while sock.recv(65536):  # with a FIN, not a reset (ECONNRESET raises here)
            pass
    return status, text


def _upload(port: int, body: bytes, first: int = 0, go: threading.Event | None = None) -> int | str:
    """POST ``body`` in 64 KB writes, the first ``first`` bytes at once, the rest once ``go`` is set. The status
    code answered, or the name of the error the client got (a reset while it wrote or read, a close without an
    answer), with "without connection: close" appended to a refusal sent while the server drains that lets the
    client send its next request on a connection about to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(_head(len(body)) + body[:first])
            if go is not None:
                go.wait(60)
            for i in range(first, len(body), 65536):
                sock.sendall(body[i:i + 65536])
            status, head = _answer(sock)
        except OSError as err:
            return type(err).__name__
        if status == 503 and "connection: close" not in head:
            return "503 without connection: close"
        return status


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("byol_requests_in_flight ")))


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_content_length_beside_chunked_is_refused_on_either_parser(trained_model, parser):
    """``Content-Length: 1`` with a chunked body of 4 MB: h11 (the Docker image's parser) frames the body as
    chunked, so the 1 byte it announces is not what it costs. The server answers 400 and admits nothing."""
    if parser == "httptools":
        pytest.importorskip("httptools")
    proc, url = start_server(trained_model, "--http", parser)
    port = int(url.rsplit(":", 1)[1])
    chunk = b"\xff" * 65536
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_head(1, b"Transfer-Encoding: chunked\r\n"))
            try:
                for _ in range(64):
                    sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the parser itself may refuse and close (httptools does)
            answer = sock.recv(65536).decode("latin-1")
        in_flight = _in_flight(url)
    finally:
        processes.stop(proc, timeout=30)
    assert answer.startswith("HTTP/1.1 400"), answer[:300]
    if parser == "h11":  # our answer (httptools refuses in its parser, with its own body)
        assert "ambiguous_length" in answer and "Transfer-Encoding" in answer, answer
    assert in_flight == 0


def test_a_full_server_refuses_clients_still_uploading_and_each_one_reads_its_503(trained_model):
    """Two slow clients fill a server of --max-concurrent-requests 2; eight clients then upload 4 MB each as fast
    as they can. Each is refused before its body is read, and each reads its 503 and an orderly close. Before,
    the server closed with the body unread, which resets the connection (and can destroy the answer)."""
    proc, url = start_server(trained_model, "--max-concurrent-requests", "2", "--http", "h11")  # the image's parser
    port = int(url.rsplit(":", 1)[1])
    holders = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(_head(20_000_000) + b"--b\r\n")
            holders.append(sock)
        deadline = time.monotonic() + 30
        while _in_flight(url) < 2:
            assert time.monotonic() < deadline, "the two slow clients were never admitted"
            time.sleep(0.05)
        body = b"\xff" * 4_000_000
        answers: list = []
        threads = [threading.Thread(target=lambda: answers.append(_upload(port, body))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for sock in holders:
            sock.close()
        processes.stop(proc, timeout=30)
    assert answers == [503] * 8, answers


def test_sigterm_while_clients_upload_answers_every_one(trained_model):
    """Six uploads admitted (their headers and first bytes sent), then SIGTERM, then six new uploads of 2 MB
    sent while the server drains, then the six admitted ones send the rest of their bodies. The new ones read
    503 draining (with Connection: close, and an orderly close), the admitted ones 200, and the server exits 0:
    every client gets a status code, none a reset."""
    proc, url = start_server(trained_model, "--drain-timeout-s", "30", "--http", "h11")  # the image's parser
    port = int(url.rsplit(":", 1)[1])
    admitted_body = _multipart([_jpeg(256, seed) for seed in range(2)])
    late_body = _multipart([os.urandom(1_000_000) for _ in range(2)])
    go = threading.Event()
    early: list = []
    late: list = []
    try:
        first = [threading.Thread(target=lambda: early.append(_upload(port, admitted_body, 4096, go)))
                 for _ in range(6)]
        for t in first:
            t.start()
        deadline = time.monotonic() + 30
        while _in_flight(url) < 6:
            assert time.monotonic() < deadline, "the six uploads were never admitted"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        while httpx.get(url + "/ready", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "the server never started draining"
            time.sleep(0.05)
        second = [threading.Thread(target=lambda: late.append(_upload(port, late_body))) for _ in range(6)]
        for t in second:
            t.start()
        for t in second:
            t.join(60)
        go.set()
        for t in first:
            t.join(60)
        code = proc.wait(timeout=60)
        log = proc.log.read_text()
    finally:
        go.set()
        processes.stop(proc, timeout=30)
    assert late == [503] * 6, (late, log[-2000:])
    assert early == [200] * 6, (early, log[-2000:])
    assert code == 0, log[-2000:]
