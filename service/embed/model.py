"""The model a folder was embedded with, loaded again to embed more images exactly as its run did (a query image,
the calibration's synthetic copies): the same weights, preprocessing, layer and pooling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from hub.layers import output_name
from hub.preprocess import preprocess_one
from service.embed.errors import EmbedJobError
from service.runtime.factory import build_backend, resolve_for_backend
from service.runtime.settings import RuntimeSettings
from storage.folder import Manifest


class FolderModel:
    """``FolderModel(manifest).embed(images, layer)``: L2-normalized ``(n, dim)`` float32 vectors of PIL images."""

    def __init__(self, manifest: Manifest, *, batch_size: int = 32) -> None:
        settings = RuntimeSettings(model=manifest.model_id, revision=None if manifest.revision.startswith("sha256:")
                                   else manifest.revision)
        resolved = resolve_for_backend(settings)
        if manifest.made_with_other_weights(resolved.config):
            raise EmbedJobError(f"the model at {manifest.model_id} now has other weights (sha256 "
                                f"{str(resolved.config.weights_sha256)[:12]}) than the set was embedded with "
                                f"({manifest.weights_sha256[:12]})")
        self.manifest = manifest
        self.preprocessing = resolved.config.preprocessing
        self.backend = build_backend(resolved, settings)
        self.batch_size = batch_size

    def embed(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        name = output_name(layer, self.manifest.pooling)
        out = np.zeros((len(images), self.manifest.dims[layer]), np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = np.stack([preprocess_one(img, self.preprocessing) for img in chunk])
            out[start:start + len(chunk)] = self.backend.run(pixels)[name].reshape(len(chunk), -1)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)
