"""The server's settings: the runtime's (:class:`service.runtime.settings.RuntimeSettings`) and the server's own,
``BYOL_*`` environment variables or ``byol-serve`` options."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from service.runtime.settings import RuntimeSettings

SECRETS = ("api_keys", "storage_options")  # never logged, never sent where they are not needed


class ServiceSettings(RuntimeSettings):
    """Settings of the embedding server: the runtime's, then its own. Each field reads ``BYOL_<NAME>``."""

    max_batch_size: int = Field(32, ge=1, description="images per inference batch")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more images")
    queue_size: int = Field(256, ge=1, description="images waiting at most; beyond, 503 with Retry-After")
    max_images: int = Field(32, ge=1, description="images per request")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1, description="request body size limit")
    max_request_pixels: int = Field(
        400_000_000, ge=1, description="pixels per request (all its images), checked on each header before "
        "decoding; beyond, 413")
    max_decode_pixels: int = Field(
        120_000_000, ge=1, description="pixels being decoded at once across the server (decoded pixels are what "
        "costs memory: ~3 bytes each as RGB, more on the way from 16-bit); a decode waits for room within its "
        "request's deadline. Sized for the 3 GiB pod of docker/k8s; an image larger than this decodes alone")
    max_concurrent_requests: int = Field(
        64, ge=1, description="requests in flight at most (every route but /health, /ready and /metrics); "
        "beyond, 503 with Retry-After before the body is read")
    max_inflight_bytes: int = Field(
        128 * 1024 * 1024, ge=1, description="request body bytes in flight at most (by Content-Length; a chunked "
        "body counts as max_body_bytes); beyond, 503 with Retry-After before the body is read")
    fast_jpeg_decode: bool = Field(
        False, description="decode JPEGs at least twice the resize target at a reduced scale in the DCT domain "
        "(12-megapixel phone photos decode ~8x faster; embeddings differ slightly from the exact path, cosine in "
        "the README); off: exact, the same vectors as byol-embed and the library")
    request_timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    drain_timeout_s: float = Field(
        25.0, gt=0, description="on SIGTERM (or Ctrl-C): /ready answers 503 at once, new /embed, /v1/embeddings and "
        "/search requests get 503 with Retry-After, the requests in flight and queued finish; the process exits 0 "
        "once drained or after this many seconds (keep it below the orchestrator's grace period)")
    api_keys: list[str] = Field(
        default_factory=list, repr=False, description="accepted Bearer keys; none: no authentication, which a "
        "server bound beyond loopback refuses unless --allow-no-auth says so. Empty keys are refused")
    allow_no_auth: bool = Field(
        False, description="serve without API keys on a non-loopback address (behind a gateway that "
        "authenticates); without it such a server refuses to start")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, description="port")
    log_level: str = Field("info", description="debug, info, warning, error")
    http: Literal["auto", "h11", "httptools"] = Field(
        "auto", description="uvicorn's HTTP/1.1 parser: auto takes httptools where it is installed, else h11 (the "
        "Docker image's); the server's framing checks hold on both")
    index: str | None = Field(None, description="an output folder of `byol-embed run` with an index (`byol-embed "
                              "index`): adds POST /search; refused at start if made by another model, layer or pooling")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, repr=False, description="fsspec options for an --index (and its images) on object "
        "storage, e.g. {\"endpoint_url\": \"http://minio:9000\"}; credentials come the provider's standard way "
        "(AWS_* variables, ~/.aws, an instance role); never logged")
    search_max_k: int = Field(100, ge=1, description="the most results /search returns (larger k is capped)")
    search_return_paths: bool = Field(False, description="/search also returns each result's stored path (off: ids only)")
    search_nprobe: int | None = Field(None, ge=1, description="IVF lists probed per /search query (default: FAISS's)")
    index_poll_s: float = Field(30.0, ge=0, description="how often the server checks --index for a new generation "
                                "(a new index/index.json, on disk or object storage); a new one is loaded beside the "
                                "served one and switched to in one step (0: never)")
    duplicate_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="the cosine at which /search duplicates=true calls an image a duplicate "
        "(default: the threshold of the folder's `byol-embed dedup`, else its calibration, else 0.86)")

    @field_validator("api_keys")
    @classmethod
    def _no_empty_key(cls, keys: list[str]) -> list[str]:
        if any(not key.strip() for key in keys):
            raise ValueError("an API key is empty (an unset variable in --api-keys \"$KEY\", or a blank line): it "
                             "would accept 'Bearer ' with nothing after it; give non-empty keys, or none at all")
        return keys

    def auth_problem(self) -> str | None:
        """Why this server must not start as configured, or ``None``: no keys on an address beyond loopback,
        unless ``allow_no_auth`` says so."""
        if self.api_keys or self.allow_no_auth or is_loopback(self.host):
            return None
        return (f"no API keys, and the server would listen on {self.host!r}, beyond this machine: anyone who can "
                "reach it could use it. Set --api-keys / BYOL_API_KEYS (a JSON list), bind to 127.0.0.1, or say "
                "--allow-no-auth / BYOL_ALLOW_NO_AUTH=true if a gateway in front authenticates")

    LOCAL_PATHS: ClassVar[tuple[str, ...]] = ("model", "cache_dir", "index")

    def portable(self, *, secrets: bool = True) -> dict[str, Any]:
        """:meth:`RuntimeSettings.portable`; ``secrets=False`` leaves out the API keys and storage options."""
        values = super().portable()
        if not secrets:
            for key in SECRETS:
                values.pop(key)
        return values


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` (and the rest of 127/8); ``0.0.0.0``, ``::`` and names are not."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer_accepted(authorization: str | None, keys: list[str]) -> bool:
    """``Authorization: Bearer <key>`` with one of ``keys``, compared in constant time; an empty token never
    matches. Used by the app and, before it buffers a body, by the Ray Serve proxy's middleware."""
    import hmac

    scheme, _, token = (authorization or "").partition(" ")
    return (scheme.lower() == "bearer" and bool(token.strip())
            and any(hmac.compare_digest(token.encode(), key.encode()) for key in keys))
