"""A small typed client for ``/embed`` (sync and async) that retries on 503 after ``Retry-After``.

    from service.client import EmbeddingClient
    with EmbeddingClient("http://localhost:8000", api_key=None) as client:
        result = client.embed(["cat.jpg", open("dog.png", "rb").read()], layers=("feature5", "avgpool"))
        result.embeddings["avgpool"]        # numpy (N, D)
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ImageInput = str | Path | bytes


@dataclass(frozen=True)
class EmbedResult:
    model: str
    revision: str
    backend: str
    dims: dict[str, int]
    embeddings: dict[str, np.ndarray]  # layer -> (N, D) float32, in request order


class EmbeddingError(RuntimeError):
    """The server answered with an error: ``status``, ``code`` and ``index`` (the image at fault, if any)."""

    def __init__(self, status: int, code: str, message: str, index: int | None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.index = status, code, index


def _read(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _request(images: Sequence[ImageInput], layers: Sequence[str], pooling: str, normalize: bool) -> dict:
    return {"images": [base64.b64encode(_read(img)).decode("ascii") for img in images], "layers": list(layers),
            "pooling": pooling, "normalize": normalize, "encoding": "base64"}


def _parse(response: httpx.Response) -> EmbedResult:
    body = response.json()
    if response.status_code != 200:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise EmbeddingError(response.status_code, err.get("code", "error"), err.get("message", response.text),
                             err.get("index"))
    layers = list(body["dims"])
    embeddings = {layer: np.stack([np.frombuffer(base64.b64decode(item["embeddings"][layer]), dtype="<f4")
                                   for item in body["data"]]) for layer in layers}
    return EmbedResult(body["model"], body["revision"], body["backend"], body["dims"], embeddings)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "1")), 30.0)
    except ValueError:
        return 1.0


class EmbeddingClient:
    """Synchronous client. ``retries``: how many times a 503 is retried after its ``Retry-After``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 3) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.retries = retries

    def embed(self, images: Sequence[ImageInput], *, layers: Sequence[str] = ("avgpool",), pooling: str = "gap",
              normalize: bool = False) -> EmbedResult:
        payload = _request(images, layers, pooling, normalize)
        for attempt in range(self.retries + 1):
            response = self._http.post("/embed", json=payload)
            if response.status_code != 503 or attempt == self.retries:
                return _parse(response)
            time.sleep(_retry_after(response))
        raise AssertionError("unreachable")

    def info(self) -> dict:
        return self._http.get("/info").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbeddingClient:
    """Asynchronous twin of :class:`EmbeddingClient`."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 3) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
        self.retries = retries

    async def embed(self, images: Sequence[ImageInput], *, layers: Sequence[str] = ("avgpool",),
                    pooling: str = "gap", normalize: bool = False) -> EmbedResult:
        payload = _request(images, layers, pooling, normalize)
        for attempt in range(self.retries + 1):
            response = await self._http.post("/embed", json=payload)
            if response.status_code != 503 or attempt == self.retries:
                return _parse(response)
            await asyncio.sleep(_retry_after(response))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
