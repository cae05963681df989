"""--fast-jpeg-decode: phone photos decoded at a reduced scale, close to the exact path, stated in /info."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.support.server import make_client


def _phone(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_fast_decode_is_close_to_the_exact_path_on_phone_photos(onnx_client, trained_model, photos):
    files = [("images", (f"{i}.jpg", _phone(img), "image/jpeg")) for i, img in enumerate(photos[:4])]
    exact = onnx_client.post("/embed?layers=avgpool,feature3", files=files).json()
    assert onnx_client.get("/info").json()["decode"] == "exact"
    with make_client(trained_model, backend="onnx", fast_jpeg_decode=True) as fast_client:
        fast = fast_client.post("/embed?layers=avgpool,feature3", files=files).json()
        assert fast_client.get("/info").json()["decode"].startswith("jpeg-draft")
    for layer in ("avgpool", "feature3"):
        a = np.array([r["embeddings"][layer] for r in exact["data"]])
        b = np.array([r["embeddings"][layer] for r in fast["data"]])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"fast vs exact decode, {layer}: cosine min {cos.min():.5f} mean {cos.mean():.5f}")
        assert cos.min() >= 0.99, (layer, cos)
        assert not np.allclose(a, b)  # the option does change pixels: it is really on
