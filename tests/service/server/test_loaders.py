"""The trainer's published folder (final/) through transformers' pipeline agrees with our /embed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.images import image_bytes

pytest.importorskip("transformers")


def test_pipeline_on_the_trainers_folder_matches_embed(onnx_client, trained_model, photos):
    """The trainer writes the transformers/ subfolder too; the pipeline (its own image processor, non-224 sizes
    here: the smoke model's 64/73 preprocessing) gives the /embed avgpool direction on real photos."""
    from transformers import pipeline

    assert (trained_model / "transformers" / "preprocessor_config.json").exists()
    extract = pipeline("image-feature-extraction", model=str(trained_model),
                       model_kwargs={"subfolder": "transformers"})
    files = [("images", (f"{i}.png", image_bytes(img, "PNG"), "image/png")) for i, img in enumerate(photos[:4])]
    served = onnx_client.post("/embed?layers=avgpool", files=files).json()
    ours = np.array([row["embeddings"]["avgpool"] for row in served["data"]])
    theirs = np.array([np.asarray(extract(img, pool=True)).reshape(-1) for img in photos[:4]])
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    print(f"pipeline ({type(extract.image_processor).__name__}) vs /embed avgpool cosine: {cos.round(5).tolist()}")
    assert cos.min() >= 0.999, cos
