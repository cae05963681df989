"""What the server takes on, bounded: requests and body bytes in flight (checked before a body is read), and
pixels being decoded (checked on each image's header, before its pixels exist).

A request over a budget is refused early with 503 + Retry-After, as TEI and Triton answer when full, rather than
admitted into a queue that grows until the pod runs out of memory. Decoding counts toward the request's deadline
and stops between images once its client is gone.

A refusal reaches its client even while the client is still uploading: the answer is sent first, then the body is
read and dropped for a bounded time (a lingering close, as nginx does), so that the server's close does not reset
the connection under the answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from service.server.errors import ServiceError, error_response

LINGER_S = 5.0  # a refused request's body is read and dropped for at most this long before the connection closes


class AmbiguousLength(ServiceError):
    def __init__(self) -> None:
        super().__init__(400, "ambiguous_length", "the request has both Content-Length and Transfer-Encoding; "
                         "send one of them (RFC 9112, section 6.3)")


def announced_length(headers: dict[bytes, bytes], limit: int) -> int:
    """A request body's size as its headers announce it; a chunked body (no ``Content-Length``) may be as large
    as ``limit``, and so is one whose length does not parse. Both headers at once raise :class:`AmbiguousLength`:
    HTTP/1.1 parsers frame such a body as chunked, so its ``Content-Length`` says nothing about its size."""
    if b"content-length" in headers and b"transfer-encoding" in headers:
        raise AmbiguousLength()
    if b"content-length" not in headers:
        return limit if b"transfer-encoding" in headers else 0
    try:
        return int(headers[b"content-length"])
    except ValueError:
        return limit


async def refuse(error: ServiceError, receive, send, *, linger_bytes: int, linger_s: float = LINGER_S) -> None:
    """Answer ``error`` before the request's body is read, then read and drop the body (at most ``linger_bytes``
    bytes, for at most ``linger_s`` seconds) before the response ends and the connection closes. Closing with the
    client's bytes unread would make the kernel reset the connection, and a client still uploading would get
    ``Connection reset`` instead of the answer and its Retry-After."""
    response = error_response(error.status, error.code, error.message, error.index, error.headers)
    await send({"type": "http.response.start", "status": error.status,
                "headers": [*response.raw_headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": response.body, "more_body": True})
    read, deadline = 0, time.monotonic() + linger_s
    while read <= linger_bytes and (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            break
        if message["type"] != "http.request":
            break  # the client is gone
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class Overloaded(ServiceError):
    def __init__(self, what: str) -> None:
        super().__init__(503, "overloaded", f"the server is busy ({what}); retry after a second",
                         headers={"Retry-After": "1"})


class Admission:
    """Requests and body bytes in flight. ``try_admit`` is called by the request middleware before the body is
    read (event loop only, so no lock); a body without ``Content-Length`` reserves the whole body limit."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.requests = 0
        self.bytes = 0

    def try_admit(self, length: int) -> Overloaded | None:
        if self.requests >= self.max_requests:
            return Overloaded(f"{self.requests} requests in flight, the limit is {self.max_requests}")
        if self.bytes + length > self.max_bytes and self.requests > 0:
            return Overloaded(f"{self.bytes} body bytes in flight; this body of {length} would pass the limit "
                              f"of {self.max_bytes}")
        self.requests += 1
        self.bytes += length
        return None

    def release(self, length: int) -> None:
        self.requests -= 1
        self.bytes -= length


class PixelBudget:
    """Pixels being decoded at once, across the server (decode threads wait here for room). Decoded pixels are
    what costs memory (a 40-megapixel image is ~120 MB as RGB, more on the way from 16-bit): the decode pool's
    size alone does not bound it, since one request holds many images and a node may have more cores than the
    pod's CPU limit. An image larger than the whole budget still decodes, alone."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.held = 0
        self._room = threading.Condition()

    def acquire(self, pixels: int, deadline: float, cancelled: threading.Event) -> None:
        """Hold ``pixels`` until :meth:`release`; raises a 504 at ``deadline`` (``time.monotonic()``) and a 499
        once ``cancelled`` is set."""
        with self._room:
            while self.held and self.held + pixels > self.max_pixels:
                if cancelled.is_set():
                    raise ServiceError(499, "client_closed", "the client disconnected")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServiceError(504, "timeout", "the request ran out of time waiting to decode its images")
                self._room.wait(min(left, 0.1))
            self.held += pixels

    def release(self, pixels: int) -> None:
        with self._room:
            self.held -= pixels
            self._room.notify_all()


class DecodeTicket:
    """One request's decode: its pixel total (``max_request_pixels``), its deadline (a callable: a drain that
    starts later cuts it) and its cancellation, checked on each image's header before the image is decoded."""

    def __init__(self, budget: PixelBudget, max_request_pixels: int, deadline: Callable[[], float]) -> None:
        self.budget, self.max_request_pixels, self.deadline = budget, max_request_pixels, deadline
        self.cancelled = threading.Event()
        self.total = 0

    def reserve(self, pixels: int, index: int) -> None:
        if self.cancelled.is_set():
            raise ServiceError(499, "client_closed", "the client disconnected")
        self.total += pixels
        if self.total > self.max_request_pixels:
            raise ServiceError(413, "request_too_large", f"image {index} brings the request to {self.total} pixels; "
                               f"the limit is {self.max_request_pixels} pixels per request", index=index)
        self.budget.acquire(pixels, self.deadline(), self.cancelled)
