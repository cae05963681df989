"""The service's errors and the one place that maps them (and hub's) to JSON HTTP responses.

Every error body is ``{"error": {"code": ..., "message": ..., "index": <image index or null>}}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.errors import HubError, ImageDecodeError, LayerError

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with its HTTP status, a stable code, and optionally the index of the image at fault."""

    def __init__(self, status: int, code: str, message: str, *, index: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.index, self.headers = status, code, message, index, headers


class QueueFullError(ServiceError):
    def __init__(self, message: str = "the server is busy: its queue is full; retry after a second") -> None:
        super().__init__(503, "overloaded", message, headers={"Retry-After": "1"})


class DrainingError(ServiceError):
    def __init__(self) -> None:
        super().__init__(503, "draining", "the server is shutting down", headers={"Retry-After": "5"})


def error_response(status: int, code: str, message: str, index: int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "index": index}}, status_code=status,
                        headers=headers)


def image_error(err: ImageDecodeError, index: int) -> ServiceError:
    if err.too_large:
        return ServiceError(413, "image_too_large", f"image {index}: {err}", index=index)
    return ServiceError(415, "unsupported_image", f"image {index}: {err}", index=index)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, err: ServiceError) -> JSONResponse:
        return error_response(err.status, err.code, err.message, err.index, err.headers)

    @app.exception_handler(ImageDecodeError)
    async def _image(request: Request, err: ImageDecodeError) -> JSONResponse:
        mapped = image_error(err, 0)
        return error_response(mapped.status, mapped.code, mapped.message, None)

    @app.exception_handler(LayerError)
    async def _layer(request: Request, err: LayerError) -> JSONResponse:
        return error_response(400, "invalid_parameter", str(err))

    @app.exception_handler(HubError)
    async def _hub(request: Request, err: HubError) -> JSONResponse:
        return error_response(400, "invalid_request", str(err))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
        return error_response(422, "malformed_request", problems or "malformed request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, "http_error", str(err.detail), None, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")
