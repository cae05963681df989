"""The HTTP contract as pydantic models: what ``/openapi.json`` shows clients.

Request bodies are validated through these models (``EmbedBody``, ``OpenAIEmbeddingsBody``). Responses are
built by hand for speed (validating 32 x 2048 floats through pydantic on every response would cost serving
time) and declared here as ``response_model`` so generated clients get real types; FastAPI does not validate
a ``Response`` a route returns itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from curation.results import RESULTS
from hub.layers import FEATURE_LAYERS

# ---------------------------------------------------------------------------------------------------------------
# Requests

# What the server decodes as an image string, said in the schema so that generated clients and fuzzers produce only
# what it takes: bare base64 (the standard alphabet, padded) or a data URI with ;base64. Valid base64 that is not an
# image is still refused (415): no schema can say which bytes are an image.
BASE64_IMAGE = r"^(data:[^,;]*(;[^,;]*)*;base64,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
IMAGE_STRING = {"contentEncoding": "base64", "pattern": BASE64_IMAGE, "minLength": 4}
_NUMBER = r"\s*(\d+(\.\d*)?|\.\d+)\s*"
BOX_TEXT = rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$"  # x0,y0,x1,y1 (the handler checks their order: 400)
# The options' vocabularies: what the handlers parse (service/server/pipeline.py) and what the schema declares
POOLINGS: tuple[str, ...] = ("gap", "mhead")
ENCODINGS: tuple[str, ...] = ("float", "base64")
TRUE_WORDS: tuple[str, ...] = ("true", "1", "yes", "on")  # a query string's or a form's booleans
FALSE_WORDS: tuple[str, ...] = ("false", "0", "no", "off")
BOOLEAN_TEXT = {"enum": [word for pair in zip(TRUE_WORDS, FALSE_WORDS) for word in pair]}
_LAYER = "|".join((*FEATURE_LAYERS, "avgpool"))
LAYER_NAME = rf"^({_LAYER})$"
LAYERS_LIST = rf"^\s*({_LAYER})\s*(,\s*({_LAYER})\s*)*$"  # comma-separated: the query string's form


class EmbedBody(BaseModel):
    """``POST /embed`` as JSON: base64 images (or data URIs) and the options."""

    model_config = ConfigDict(extra="forbid")
    images: list[Annotated[str, Field(json_schema_extra=IMAGE_STRING)]] = Field(
        description="base64 image bytes or data:image/...;base64, URIs (never URLs)", json_schema_extra={"minItems": 1})
    layers: Annotated[list[Annotated[str, Field(json_schema_extra={"pattern": LAYER_NAME})]],
                      Field(json_schema_extra={"minItems": 1})] | Annotated[
        str, Field(json_schema_extra={"pattern": LAYERS_LIST})] | None = Field(
        None, description="feature1..feature5, avgpool (list or comma-separated)")
    pooling: str | None = Field(None, description="gap (default) or mhead",
                                json_schema_extra={"enum": [*POOLINGS, None]})
    normalize: bool | None = Field(None, description="L2-normalize each embedding (default false)")
    encoding: str | None = Field(None, description="float (default) or base64 (little-endian float32)",
                                 json_schema_extra={"enum": [*ENCODINGS, None]})


class OpenAIEmbeddingsBody(BaseModel):
    """``POST /v1/embeddings``, OpenAI's shape: ``input`` is one image or a list, as base64 or data URIs."""

    model_config = ConfigDict(extra="ignore")
    input: Annotated[str, Field(min_length=1, json_schema_extra=IMAGE_STRING)] | Annotated[
        list[Annotated[str, Field(min_length=1, json_schema_extra=IMAGE_STRING)]], Field(min_length=1)] = Field(
        description="a data:image/...;base64 URI or bare base64, or a non-empty list of them")
    model: str | None = Field(None, description="must be the served model's id when given")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must equal the avgpool size when given")
    user: str | None = None


class SearchBody(BaseModel):
    """``POST /search`` as JSON: a base64 image or the id of an image in the indexed set, and ``k``."""

    # exactly one of image and id (the handler answers 400 otherwise): said in the schema, for generated clients
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["image"], "properties": {"image": {"type": "string"}, "id": {"type": "null"}}},
        {"required": ["id"], "properties": {"id": {"type": "string"}, "image": {"type": "null"}}}]})
    image: Annotated[str, Field(json_schema_extra=IMAGE_STRING)] | None = Field(
        None, description="base64 image bytes or a data:image/...;base64, URI")
    id: str | None = Field(None, description="an id in the indexed set (its own row is left out of the results)")
    k: int | None = Field(None, description="number of results (default 10, capped by the server; below 1: 400)",
                          json_schema_extra={"minimum": 1})
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="only results with a cosine at or above it "
                                    "(default: none; with duplicates, the server's duplicate threshold)")
    duplicates: bool | None = Field(None, description="is this image already in the set? Matches at or above the "
                                    "duplicate threshold (or min_score), each marked exact (the same bytes, by "
                                    "content hash) or near")
    regions: bool | None = Field(None, description="search inside images: the images holding the query part in one "
                                 "of their regions (the folder needs a region index), each result with its box")
    box: Annotated[str, Field(json_schema_extra={"pattern": BOX_TEXT})] | None = Field(
        None, description="with regions: the part of the query image, x0,y0,x1,y1 in pixels or in fractions of its "
                          "width and height (all four at most 1); default the whole image")


MULTIPART_EMBED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                              "description": "one or more image files; options go in the query string"}},
    "required": ["images"], "additionalProperties": False,
}


def request_body(*, json_model: type[BaseModel], multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body by hand (so its errors keep this service's shape)."""
    content: dict[str, Any] = {}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    content["application/json"] = {"schema": json_model.model_json_schema(ref_template="#/components/schemas/{model}")}
    return {"requestBody": {"required": True, "content": content}}


# ---------------------------------------------------------------------------------------------------------------
# Responses


class EmbedItem(BaseModel):
    index: int
    embeddings: dict[str, list[float] | str] = Field(description="per layer: floats, or base64 little-endian float32")


class EmbedResponse(BaseModel):
    model: str
    revision: str
    backend: str
    pooling: str
    normalized: bool
    encoding: str
    dims: dict[str, int]
    data: list[EmbedItem]


class SearchResult(BaseModel):
    id: str
    score: float = Field(description="cosine similarity")
    path: str | None = Field(None, description="the stored path, when the server is set to return paths")
    kind: Literal["exact", "near"] | None = Field(
        None, description="with duplicates: exact (the same bytes as the query, by content hash) or near")
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="with regions: the region of "
                                    "this image that matched, x0, y0, x1, y1 in its pixels")
    size: list[int] | None = Field(None, min_length=2, max_length=2, description="with regions: the image's width "
                                   "and height in pixels (to draw the box on a thumbnail)")


class SearchResponse(BaseModel):
    model: str
    k: int
    results: list[SearchResult]
    generation: int = Field(0, description="the generation of the embedding folder the answer comes from")
    min_score: float | None = Field(None, description="the cosine the results were cut at (none: no cut)")
    duplicate: bool | None = Field(None, description="with duplicates: whether the image is already in the set")
    regions: bool | None = Field(None, description="whether the results are images holding the query part")
    query_box: list[float] | None = Field(None, min_length=4, max_length=4, description="with regions: the part "
                                          "looked for, x0, y0, x1, y1 in the query image's pixels")


# The curation API's models: the kinds and files come from the results contract (curation/results.py)
PAGED = ("duplicates", "outliers", "leaks", "map", "shared_parts")  # the results the page has a tab for

CurationAvailable = create_model(
    "CurationAvailable",
    **{name: (bool, Field(False, description=f"the index folder has curation/{RESULTS[name].table} (byol-embed "
                                            f"{RESULTS[name].command})")) for name in PAGED},
    generation=(int, Field(0, description="the generation of the embedding folder being served")),
    stale=(dict[str, str], Field(default_factory=dict, description="results made from an older generation than the "
                                 "one served: name -> what to run again")),
)


class LeakRow(BaseModel):
    id: str = Field(description="the image in this folder")
    id_a: str = Field(description="its copy in the other folder")
    similarity: float = Field(description="cosine between the two")
    kind: Literal[RESULTS["leaks"].kinds]


class LeaksPage(BaseModel):
    total: int
    offset: int
    rows: list[LeakRow]
    other: str | None = Field(None, description="the other folder (byol-embed leaks EMB_A ...)")
    threshold: float | None = None


class DuplicateMember(BaseModel):
    id: str
    similarity: float = Field(description="cosine to the group's representative")
    kind: Literal[RESULTS["duplicates"].kinds]
    remove: bool | None = Field(None, description="true: a copy that can go (all but the kept one); null: a dedup "
                                "made before the rule was recorded")


class DuplicateGroup(BaseModel):
    group: int
    representative: str
    kept: str | None = Field(None, description="the member kept by dedup's --keep rule")
    size: int = Field(description="members in all (at most `members` of them are listed)")
    members: list[DuplicateMember]


class DuplicatesPage(BaseModel):
    total: int = Field(description="groups in all")
    offset: int
    keep: str | None = Field(None, description="the rule that chose the member kept (dedup --keep)")
    groups: list[DuplicateGroup]


class OutlierRow(BaseModel):
    id: str
    rank: int | None = Field(description="1: the most unusual; null for broken images")
    kind: Literal[RESULTS["outliers"].kinds]
    score: float | None = Field(description="1 - mean cosine to the k nearest non-duplicates")
    percentile: float | None
    reasons: list[str] = Field(default_factory=list, description="no content: the quality flags that say so")
    error: str | None = Field(description="why a broken image could not be embedded")


class MapPoints(BaseModel):
    total: int = Field(description="points in the map")
    shown: int = Field(description="points sent: all up to the limit, else an even sample of them")
    ids: list[str]
    x: list[float] = Field(description="in [-1, 1]")
    y: list[float] = Field(description="in [-1, 1]")
    cluster: list[int] = Field(description="k-means cluster (byol-embed map)")
    label: list[str | None] | None = Field(None, description="the folder's labels, if any")
    flag: list[str | None] | None = Field(None, description="quality reasons (byol-embed quality), comma-separated")
    nmi: float | None = Field(None, description="the clusters' NMI against the labels, where there are labels")
    note: str | None = Field(None, description="what an older map lacks, and how to make it again")


class SharedPartRow(BaseModel):
    id: str
    id_b: str = Field(description="the other image of the pair")
    similarity: float = Field(description="cosine of the best pair of regions")
    box: list[float] = Field(min_length=4, max_length=4, description="the part in the first image, x0, y0, x1, y1 "
                             "in its pixels")
    box_b: list[float] = Field(min_length=4, max_length=4, description="the part in the other image")
    size: list[int] | None = Field(None, min_length=2, max_length=2, description="the first image's width and "
                                   "height (to draw its box on a thumbnail)")
    size_b: list[int] | None = Field(None, min_length=2, max_length=2, description="the other image's")
    whole: float = Field(description="cosine of the two images as wholes")


class SharedPartsPage(BaseModel):
    total: int
    offset: int
    rows: list[SharedPartRow]
    threshold: float | None = None


class OutliersPage(BaseModel):
    total: int
    offset: int
    rows: list[OutlierRow]


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    demo: bool


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    queue_depth: int


class Limits(BaseModel):
    max_images: int
    max_body_bytes: int
    max_pixels: int


class InfoResponse(BaseModel):
    model: str | None = None
    revision: str | None = None
    backend: str | None = None
    precision: str | None = None
    demo: bool | None = None
    architecture: str | None = None
    stem: str | None = None
    layers: list[str] | None = None
    poolings: list[str] | None = None
    dims: dict[str, dict[str, int]] | None = None
    preprocessing: dict[str, Any] | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    inference: dict[str, int] | None = Field(None, description="streams (batches run at once) and threads_per_stream")
    decode: str | None = Field(None, description="exact, or jpeg-draft when fast_jpeg_decode is on")
    limits: Limits | None = None
    provenance: dict[str, Any] | None = None
    search: dict[str, Any] | None = Field(None, description="the index behind POST /search, when one is loaded")
    status: str | None = Field(None, description="'loading' while the model is not loaded yet")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_parameter, overloaded")
    message: str
    index: int | None = Field(None, description="the index of the image at fault, where one is")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error model on each status a route can answer with."""
    described = {400: "bad parameters or images", 401: "missing or invalid API key", 413: "too large",
                 415: "unsupported media type or image", 422: "malformed body", 499: "client closed the request",
                 503: "not ready, overloaded or draining (Retry-After)", 504: "timed out"}
    return {code: {"model": ErrorResponse, "description": described.get(code, "error")} for code in codes}


EMBED_ERRORS = error_responses(400, 401, 413, 415, 422, 499, 503, 504)
