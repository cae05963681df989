import base64

import numpy as np
import pytest
from PIL import Image

from hub import BYOLModel
from hub.layers import LAYERS
from tests.support.images import image_bytes
from tests.support.server import float32_from_json_text, make_client

ALL = ",".join(LAYERS)


def _multipart(blobs):
    return [("images", (f"img{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(blobs)]


def _vectors(body, layer):
    return np.array([item["embeddings"][layer] for item in body["data"]], dtype=np.float32)


def test_multipart_embeds_every_layer_in_request_order(onnx_client, trained_model, photo_bytes):
    r = onnx_client.post(f"/embed?layers={ALL}&pooling=mhead", files=_multipart(photo_bytes))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "org/byol-test" and body["backend"] == "onnx"
    assert body["revision"].startswith("sha256:")
    cfg = BYOLModel.from_pretrained(trained_model).config
    assert body["dims"] == {k: v for k, v in cfg.dims("mhead").items()}
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
    # the same photos one at a time give the same rows: order is kept through the batcher
    single = onnx_client.post("/embed?layers=avgpool", files=_multipart(photo_bytes[2:3])).json()
    assert np.allclose(_vectors(single, "avgpool")[0], _vectors(body, "avgpool")[2], atol=1e-5)


def test_embeddings_equal_the_model_on_the_same_photos(onnx_client, trained_model, photos, photo_bytes):
    import io

    from PIL import Image as PILImage

    model = BYOLModel.from_pretrained(trained_model)
    decoded = [PILImage.open(io.BytesIO(b)) for b in photo_bytes]
    ref = model.embed(decoded, layers=("feature3", "avgpool"))
    body = onnx_client.post("/embed?layers=feature3,avgpool", files=_multipart(photo_bytes)).json()
    for layer in ("feature3", "avgpool"):
        got = _vectors(body, layer)
        assert np.abs(got - ref[layer]).max() <= 1e-4 * np.abs(ref[layer]).max()


def test_float_responses_parse_back_to_exactly_the_model_float32(onnx_client, photo_bytes):
    """The float text round-trips: parsed as float32 it equals the base64 bytes (the model's float32) exactly."""
    files = _multipart(photo_bytes[:2])
    as_text = onnx_client.post("/embed?layers=feature3,avgpool", files=files)
    as_bytes = onnx_client.post("/embed?layers=feature3,avgpool&encoding=base64", files=files).json()
    for i in range(2):
        for layer in ("feature3", "avgpool"):
            exact = np.frombuffer(base64.b64decode(as_bytes["data"][i]["embeddings"][layer]), "<f4")
            parsed = float32_from_json_text(as_text.text, "data", i, "embeddings", layer)
            assert np.array_equal(parsed, exact), layer
    uri = "data:image/jpeg;base64," + base64.b64encode(photo_bytes[0]).decode()
    text = onnx_client.post("/v1/embeddings", json={"input": uri, "encoding_format": "float"})
    raw = onnx_client.post("/v1/embeddings", json={"input": uri, "encoding_format": "base64"}).json()
    exact = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    assert np.array_equal(float32_from_json_text(text.text, "data", 0, "embedding"), exact)
    # and the text is well under what the standard library writes for the same float32 vectors
    import json

    stdlib = json.dumps({"data": [{"embeddings": {
        layer: np.frombuffer(base64.b64decode(v), "<f4").tolist() for layer, v in item["embeddings"].items()}}
        for item in as_bytes["data"]]})
    assert len(as_text.content) < 0.7 * len(stdlib)


def test_onnx_and_torch_backends_agree(onnx_client, torch_client, photo_bytes):
    for pooling in ("gap", "mhead"):
        a = onnx_client.post(f"/embed?layers={ALL}&pooling={pooling}", files=_multipart(photo_bytes)).json()
        b = torch_client.post(f"/embed?layers={ALL}&pooling={pooling}", files=_multipart(photo_bytes)).json()
        assert b["backend"] == "torch"
        for layer in LAYERS:
            diff = np.abs(_vectors(a, layer) - _vectors(b, layer)).max()
            assert diff <= 1e-4, (pooling, layer, diff)


def test_json_base64_data_uris_normalize_and_base64_output(onnx_client, photo_bytes):
    multipart = onnx_client.post("/embed?layers=feature5", files=_multipart(photo_bytes[:2])).json()
    images = ["data:image/jpeg;base64," + base64.b64encode(photo_bytes[0]).decode(),
              base64.b64encode(photo_bytes[1]).decode()]
    r = onnx_client.post("/embed", json={"images": images, "layers": ["feature5"], "normalize": True,
                                         "encoding": "base64"})
    assert r.status_code == 200, r.text
    rows = [np.frombuffer(base64.b64decode(item["embeddings"]["feature5"]), "<f4") for item in r.json()["data"]]
    raw = _vectors(multipart, "feature5")
    for row, ref in zip(rows, raw):
        assert abs(np.linalg.norm(row) - 1) < 1e-5
        assert np.allclose(row, ref / np.linalg.norm(ref), atol=1e-5)


def test_query_and_body_options(onnx_client, photo_bytes):
    image = base64.b64encode(photo_bytes[0]).decode()
    r = onnx_client.post("/embed?layers=feature2", json={"images": [image]})
    assert r.status_code == 200 and list(r.json()["dims"]) == ["feature2"]
    r = onnx_client.post("/embed?layers=feature2", json={"images": [image], "layers": ["feature2"]})
    assert r.status_code == 200
    r = onnx_client.post("/embed?layers=feature2", json={"images": [image], "layers": ["feature3"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "conflicting_parameters"
    r = onnx_client.post("/embed?normalize=true", json={"images": [image], "normalize": False})
    assert r.status_code == 400


HOSTILE = [
    ("truncated jpeg", lambda b: b[: len(b) // 3], 415),
    ("zero bytes", lambda b: b"", 415),
    ("text posing as png", lambda b: b"I am not a PNG at all", 415),
    ("svg", lambda b: b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", 415),
    ("huge dimensions", lambda b: image_bytes(Image.new("L", (9000, 9000)), "PNG"), 413),
]


@pytest.mark.parametrize("name, make, status", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_images_are_refused_and_the_server_keeps_serving(onnx_client, photo_bytes, name, make, status):
    blobs = [photo_bytes[0], make(photo_bytes[1])]
    r = onnx_client.post("/embed", files=_multipart(blobs))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["index"] == 1 and err["message"]
    assert onnx_client.post("/embed", files=_multipart(photo_bytes[:1])).status_code == 200


@pytest.mark.parametrize("request_kwargs, status, code", [
    ({"files": [("image", ("a.jpg", b"x", "image/jpeg"))]}, 400, "unknown_field"),
    ({"params": {"layers": "layer4"}, "files": "PHOTO"}, 400, "invalid_parameter"),
    ({"params": {"pooling": "max"}, "files": "PHOTO"}, 400, "invalid_parameter"),
    ({"params": {"encoding": "hex"}, "files": "PHOTO"}, 400, "invalid_parameter"),
    ({"json": {"images": ["@@not base64@@"]}}, 400, "invalid_base64"),
    ({"json": {"images": ["https://example.com/cat.jpg"]}}, 400, "invalid_image"),
    ({"json": {"imgs": []}}, 422, "malformed_request"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "malformed_request"),
    ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"json": {"images": []}}, 400, "no_images"),
])
def test_bad_requests_get_clear_errors(onnx_client, photo_bytes, request_kwargs, status, code):
    if request_kwargs.get("files") == "PHOTO":
        request_kwargs = {**request_kwargs, "files": _multipart(photo_bytes[:1])}
    r = onnx_client.post("/embed", **request_kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_limits(trained_model, photo_bytes):
    with make_client(trained_model, max_images=2, max_body_bytes=400_000, max_pixels=100_000) as client:
        r = client.post("/embed", files=_multipart(photo_bytes[:3]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_images"
        big = image_bytes(Image.effect_noise((700, 700), 60).convert("RGB"), "PNG")
        r = client.post("/embed", files=_multipart([big]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        r = client.post("/embed", files=_multipart([image_bytes(Image.new("RGB", (400, 300)), "PNG")]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"


def _unusual() -> dict[str, bytes]:
    base = Image.effect_noise((80, 60), 50).convert("RGB")
    frames = [Image.new("RGB", (30, 30), c) for c in ("red", "blue")]
    gif = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return {
        "1x1": image_bytes(Image.new("RGB", (1, 1), "green"), "PNG"),
        "cmyk jpeg": image_bytes(base.convert("CMYK"), "JPEG"),
        "16-bit png": image_bytes(Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257), "PNG"),
        "animated gif": gif,
        "palette": image_bytes(base.convert("P"), "PNG"),
        "rgba": image_bytes(base.convert("RGBA"), "PNG"),
        "grayscale": image_bytes(base.convert("L"), "JPEG"),
        "webp": image_bytes(base, "WEBP"),
    }


def test_valid_but_unusual_images_are_embedded(onnx_client):
    unusual = _unusual()
    r = onnx_client.post("/embed", files=_multipart(list(unusual.values())))
    assert r.status_code == 200, r.text
    vectors = _vectors(r.json(), "avgpool")
    assert vectors.shape[0] == len(unusual) and np.isfinite(vectors).all()


def test_api_keys(trained_model, photo_bytes):
    with make_client(trained_model, api_keys=["s3cret", "other"]) as client:
        r = client.post("/embed", files=_multipart(photo_bytes[:1]))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.post("/embed", files=_multipart(photo_bytes[:1]),
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/embed", files=_multipart(photo_bytes[:1]),
                           headers={"Authorization": "Bearer other"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def test_int8_precision_serves_the_quantized_graph(tmp_path, trained_model, photos, photo_bytes, onnx_client):
    import shutil

    from hub.config import ModelConfig
    from hub.export.quantize import quantize_int8

    folder = tmp_path / "m"
    shutil.copytree(trained_model, folder)
    quantize_int8(folder, photos)
    assert ModelConfig.load(folder).onnx["int8"]["method"].startswith("static QDQ")
    with make_client(folder, precision="int8") as client:
        assert client.get("/info").json()["precision"] == "int8"
        got = _vectors(client.post("/embed?layers=avgpool", files=_multipart(photo_bytes)).json(), "avgpool")
    ref = _vectors(onnx_client.post("/embed?layers=avgpool", files=_multipart(photo_bytes)).json(), "avgpool")
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.97, cos
    from service.runtime.onnx import OnnxRuntimeError

    with pytest.raises(OnnxRuntimeError, match="no model.int8.onnx; make one with `byol-hub export"):
        with make_client(trained_model, precision="int8"):  # no int8 graph there: a clear error at start
            pass
