"""The model a folder was embedded with, loaded again to embed more images exactly as its run did (a query image,
the calibration's synthetic copies): the same weights, preprocessing, layer and pooling. ``byol-embed`` passes
it to the curation commands that need one (:class:`curation.calibration.Embedder`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image

from curation.regions import decoded, folder_codec, query_parts
from hub.layers import map_name, output_name
from hub.preprocess import preprocess_one
from service.embed.errors import EmbedJobError
from service.runtime.factory import build_backend, resolve_for_backend
from service.runtime.settings import RuntimeSettings
from storage.folder import Manifest
from storage.imported import is_imported
from storage.vectors import l2_normalize


class FolderModel:
    """``FolderModel(manifest).embed(images, layer)``: L2-normalized ``(n, dim)`` float32 vectors of PIL images.
    The model is loaded at the first ``embed`` (a command that finds a calibration never loads it)."""

    def __init__(self, manifest: Manifest, *, batch_size: int = 32, maps: tuple[str, ...] = (),
                 store: Any = None) -> None:
        """``maps``: layers whose maps the backend also gives (region queries); ``store``: the folder (its region
        codec, for :meth:`region_vectors`)."""
        self.manifest, self.batch_size, self.maps, self.store = manifest, batch_size, tuple(maps), store

    @cached_property
    def _loaded(self):
        manifest = self.manifest
        if is_imported(manifest):
            raise EmbedJobError("the folder's vectors were imported (`byol-embed import`): no model made them, so "
                                "no more images can be embedded like them")
        settings = RuntimeSettings(model=manifest.model_id, revision=None if manifest.revision.startswith("sha256:")
                                   else manifest.revision)
        resolved = resolve_for_backend(settings, self.maps)
        if manifest.made_with_other_weights(resolved.config):
            raise EmbedJobError(f"the model at {manifest.model_id} now has other weights (sha256 "
                                f"{str(resolved.config.weights_sha256)[:12]}) than the set was embedded with "
                                f"({manifest.weights_sha256[:12]})")
        return resolved.config.preprocessing, build_backend(resolved, settings, self.maps)

    def _outputs(self, images: Sequence[Image.Image], name: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, the output name of the batch images[start:start + batch_size])``, a batch at a time."""
        preprocessing, backend = self._loaded
        for start in range(0, len(images), self.batch_size):
            pixels = np.stack([preprocess_one(img, preprocessing) for img in images[start:start + self.batch_size]])
            yield start, backend.run(pixels)[name]

    def embed(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        out = np.zeros((len(images), self.manifest.dims[layer]), np.float32)
        for start, values in self._outputs(images, output_name(layer, self.manifest.pooling)):
            out[start:start + len(values)] = values.reshape(len(values), -1)
        return l2_normalize(out, out=out)

    def region_parts(self, image: Image.Image, box: tuple[float, float, float, float] | None) -> np.ndarray:
        """The probes of a query part (:func:`curation.regions.query_parts`) on the folder's region layer."""
        layer = self.manifest.regions["layer"]
        if layer not in self.maps:
            raise ValueError(f"this FolderModel gives no maps of {layer}; make it with maps=({layer!r},)")
        preprocessing, backend = self._loaded
        return query_parts(image, box, preprocessing, lambda pixels: backend.run(pixels)[map_name(layer)])

    def region_vectors(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images' stored region vectors as the folder's run made them: ``(n, windows, dims)`` unit float32 (the
        folder's codec applied to the maps of its region layer)."""
        codec = self._codec
        out = []
        for _, maps in self._outputs(images, map_name(self.manifest.regions["layer"])):
            codes = codec.encode_maps(maps)
            out.append(decoded(codec, codes.reshape(len(codes), -1)).reshape(len(codes), len(codec.windows), -1))
        return np.concatenate(out)

    @cached_property
    def _codec(self):
        from storage.store import as_store

        return folder_codec(as_store(self.store), self.manifest)
