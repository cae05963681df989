"""The options of an embedding request, parsed and validated in one place.

``embed_options`` takes what the query string and the JSON body say (a multipart request has only the query),
refuses a body that contradicts the query, and checks the result against what the served model outputs; it
returns the one ``EmbedOptions`` that every later step reads. Routes only read bodies and call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.errors import LayerError
from hub.layers import check_layers, output_name
from service.errors import ServiceError

SERVED_POOLINGS = ("gap", "mhead")
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbedOptions:
    layers: tuple[str, ...] = ("avgpool",)
    pooling: str = "gap"
    normalize: bool = False
    encoding: str = "float"


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ServiceError(400, "invalid_parameter", f"{name} must be true or false, got {value!r}")


def _layers(value: Any) -> tuple[str, ...]:
    try:
        return check_layers(value if value is not None else ("avgpool",))
    except LayerError as err:
        raise ServiceError(400, "invalid_parameter", str(err)) from None


def _pooling(value: Any) -> str:
    pooling = value or "gap"
    if pooling not in SERVED_POOLINGS:
        raise ServiceError(400, "invalid_parameter", f"unknown pooling {pooling!r}; accepted: {', '.join(SERVED_POOLINGS)}")
    return pooling


def _normalize(value: Any) -> bool:
    return parse_bool(value, "normalize") if value is not None else False


def _encoding(value: Any) -> str:
    encoding = value or "float"
    if encoding not in ENCODINGS:
        raise ServiceError(400, "invalid_parameter", f"unknown encoding {encoding!r}; accepted: float, base64")
    return encoding


# each option, its parser (value or None -> the validated value or its default), in the order they are checked
PARSERS: dict[str, Callable[[Any], Any]] = {"layers": _layers, "pooling": _pooling, "normalize": _normalize,
                                           "encoding": _encoding}


def embed_options(query: Mapping[str, Any], body: Mapping[str, Any] | None, outputs: Sequence[str]) -> EmbedOptions:
    """The request's options from the query string and (JSON requests) the body's given fields.

    A field given in the body wins over the query string, but both giving different values is a 400
    ``conflicting_parameters``; a value that does not parse, or a layer the served graph has no output for
    with that pooling, is a 400 ``invalid_parameter`` that says what is accepted.
    """
    body = body or {}
    values = {}
    for name, parse in PARSERS.items():
        from_query = query.get(name)
        if name in body:
            value = parse(body[name])
            if from_query is not None and parse(from_query) != value:
                raise ServiceError(400, "conflicting_parameters",
                                   f"{name} is {from_query!r} in the query string but {body[name]!r} in the body")
        else:
            value = parse(from_query)
        values[name] = value
    options = EmbedOptions(**values)
    missing = [n for n in options.layers if output_name(n, options.pooling) not in outputs]
    if missing:
        raise ServiceError(400, "invalid_parameter", f"pooling {options.pooling!r} is not available for "
                           f"{', '.join(missing)} on this model (its maps are smaller than the mhead grids); "
                           "use pooling 'gap'")
    return options
