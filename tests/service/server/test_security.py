"""Fail closed, in-process: authentication settings, secrets kept out of reprs and errors, the request budgets and
deadlines, and unhandled errors answered like every other answer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.server.admission import Admission, DecodeTicket, PixelBudget
from service.server.errors import ServiceError
from service.server.settings import ServiceSettings, is_loopback
from tests.support.images import image_bytes
from tests.support.server import make_client


@pytest.mark.parametrize("argv, message", [
    (["--api-keys", ""], "an API key is empty"),
    (["--api-keys", "good-key", "  "], "an API key is empty"),
    (["--host", "0.0.0.0"], "refusing to start: no API keys"),
    (["--host", "192.0.2.7"], "refusing to start: no API keys"),
])
def test_fail_open_settings_refuse_to_start(argv, message, capsys):
    from service.server.cli import main

    assert main(["--model", "unused", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "good-key" not in err  # the message never echoes a key


def test_no_keys_is_allowed_on_loopback_or_when_said(monkeypatch):
    assert ServiceSettings(host="127.0.0.1").auth_problem() is None
    assert ServiceSettings(host="::1").auth_problem() is None
    assert ServiceSettings(host="0.0.0.0", api_keys=["k-1"]).auth_problem() is None
    assert ServiceSettings(host="0.0.0.0", allow_no_auth=True).auth_problem() is None
    monkeypatch.setenv("BYOL_ALLOW_NO_AUTH", "true")
    assert ServiceSettings(host="0.0.0.0").auth_problem() is None
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and is_loopback("localhost")


def test_keys_stay_out_of_the_settings_repr():
    settings = ServiceSettings(api_keys=["very-secret-key"])
    assert "very-secret-key" not in repr(settings) and "very-secret-key" not in str(settings)


def test_an_empty_bearer_token_is_refused(trained_model):
    with make_client(trained_model, api_keys=["k-0123"], max_wait_ms=2) as client:
        blob = image_bytes(Image.new("RGB", (64, 48), "red"), "PNG")
        for header in ("Bearer ", "Bearer", "bearer  ", "k-0123"):
            r = client.post("/embed", files={"images": ("a.png", blob, "image/png")},
                            headers={"Authorization": header})
            assert r.status_code == 401, header
        ok = client.post("/embed", files={"images": ("a.png", blob, "image/png")},
                         headers={"Authorization": "Bearer k-0123"})
        assert ok.status_code == 200


def test_an_unhandled_error_is_answered_like_every_other_answer(trained_model):
    """A 500 from a bug carries the request id and the error shape, and reaches the metrics."""
    with make_client(trained_model, max_wait_ms=2) as client:
        def boom() -> None:
            raise KeyError("a bug")

        client.app.add_api_route("/boom", boom)
        r = client.get("/boom", headers={"x-request-id": "req-42"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "req-42"
        assert r.json()["error"]["code"] == "internal_error" and "a bug" not in r.text
        assert 'byol_requests_total{route="other",status="500"} 1.0' in client.get("/metrics").text


def test_admission_refuses_past_the_request_and_byte_budgets():
    admission = Admission(max_requests=2, max_bytes=100)
    assert admission.try_admit(60) is None
    refused = admission.try_admit(60)  # 120 bytes > 100 with a request in flight
    assert refused is not None and refused.status == 503 and refused.headers["Retry-After"]
    assert admission.try_admit(40) is None
    assert admission.try_admit(0) is not None  # 2 requests in flight
    admission.release(60)
    admission.release(40)
    assert admission.try_admit(500) is None  # alone, a body over the byte budget still goes (the body limit rules)


def test_the_pixel_budget_waits_for_room_then_times_out_or_stops_for_a_gone_client():
    budget = PixelBudget(100)
    budget.acquire(80, time.monotonic() + 1, threading.Event())
    with pytest.raises(ServiceError) as err:
        budget.acquire(30, time.monotonic() + 0.2, threading.Event())
    assert err.value.status == 504
    gone = threading.Event()
    gone.set()
    with pytest.raises(ServiceError) as err:
        budget.acquire(30, time.monotonic() + 5, gone)
    assert err.value.status == 499
    threading.Timer(0.2, budget.release, (80,)).start()
    budget.acquire(30, time.monotonic() + 5, threading.Event())  # room once the first decode is done
    assert budget.held == 30
    budget.release(30)
    budget.acquire(500, time.monotonic() + 1, threading.Event())  # larger than the budget: alone, it goes


def test_a_request_over_its_pixel_total_is_refused_before_decoding(trained_model):
    from hub.hub_io import resolve_model
    from service.server.pipeline import decode_and_preprocess

    config = resolve_model(str(trained_model)).config
    blobs = [image_bytes(Image.new("RGB", (100, 100), "blue"), "PNG")] * 3
    ticket = DecodeTicket(PixelBudget(10**9), max_request_pixels=25_000, deadline=lambda: time.monotonic() + 10)
    with pytest.raises(ServiceError) as err:
        decode_and_preprocess(blobs, config, 10**8, ticket=ticket)
    assert err.value.status == 413 and err.value.index == 2 and ticket.budget.held == 0
    ticket = DecodeTicket(PixelBudget(10**9), max_request_pixels=10**8, deadline=lambda: time.monotonic() + 10)
    ticket.cancelled.set()  # the client is gone: no image is decoded
    with pytest.raises(ServiceError) as err:
        decode_and_preprocess(blobs, config, 10**8, ticket=ticket)
    assert err.value.status == 499
    out = decode_and_preprocess(blobs, config, 10**8, ticket=DecodeTicket(
        PixelBudget(10**9), max_request_pixels=10**8, deadline=lambda: time.monotonic() + 10))
    assert out.shape[0] == 3 and np.isfinite(out).all()


def test_a_drain_cuts_deadlines_to_its_budget():
    from service.server.state import DRAIN_MARGIN_S, ServiceState

    state = ServiceState(ServiceSettings(request_timeout_s=60, drain_timeout_s=25))
    started = time.monotonic()
    assert state.deadline(started) == pytest.approx(started + 60)
    state.begin_drain()
    assert state.deadline(started) == pytest.approx(state.drain_started + 25 - DRAIN_MARGIN_S)


def test_the_ray_proxy_middleware_bounds_what_it_buffers():
    """Serve's proxy replays lost requests from a buffered copy: the body limit (by Content-Length) and the keys
    are checked before a byte is held, and past the total it may hold a request goes through unbuffered."""
    pytest.importorskip("ray.serve")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from service.ray_serve import ReplayOnReplicaLoss

    seen: list[int] = []

    async def embed(request):
        seen.append(len(await request.body()))
        return JSONResponse({"ok": True}, headers={"X-Byol-Replica": "replica=a"})

    def client(**options) -> tuple[TestClient, ReplayOnReplicaLoss]:
        proxy = ReplayOnReplicaLoss(Starlette(routes=[Route("/embed", embed, methods=["POST"])]), **options)
        return TestClient(proxy), proxy

    http, _ = client(max_body_bytes=1000)
    assert http.post("/embed", content=b"x" * 2000).status_code == 413 and not seen
    assert http.post("/embed", content=b"x" * 500).status_code == 200 and seen == [500]
    http, _ = client(api_keys=["k-1"])
    assert http.post("/embed", content=b"x" * 10).status_code == 401 and seen == [500]
    assert http.post("/embed", content=b"x" * 10, headers={"Authorization": "Bearer "}).status_code == 401
    assert http.post("/embed", content=b"x" * 10, headers={"Authorization": "Bearer k-1"}).status_code == 200
    http, proxy = client(max_body_bytes=1000, max_buffered_bytes=100)
    assert http.post("/embed", content=b"x" * 500).status_code == 200  # unbuffered, still answered
    assert seen[-1] == 500 and proxy.buffered == 0


def test_processes_that_only_load_the_model_get_no_secrets(monkeypatch):
    """The embedding job's Ray actors load the model: they get neither the API keys nor the storage options (their
    output store and input listing carry the I/O they need); Serve replicas, which check keys, get them."""
    monkeypatch.setenv("BYOL_API_KEYS", '["k-secret"]')
    monkeypatch.setenv("BYOL_STORAGE_OPTIONS", '{"key": "AKIA-secret"}')
    settings = ServiceSettings(model="m")
    actor = settings.portable(secrets=False)
    assert "api_keys" not in actor and "storage_options" not in actor and actor["model"] == "m"
    assert settings.portable()["api_keys"] == ["k-secret"]
    assert "AKIA-secret" not in repr(settings) and "k-secret" not in repr(settings)
