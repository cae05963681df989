"""The trainer's monitors of the online encoder: a weighted kNN on a labelled folder (optional), and the label-free
signals on a fixed held-out sample of the training images (RankMe and the normalized outputs' spread)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hub import BYOLModel
from hub.layers import LAYERS
from hub.preprocess import PreprocessConfig, preprocess_one, to_rgb
from hub.spectrum import label_free
from storage.sources import ImageSource

logger = logging.getLogger(__name__)


class KnnMonitor:
    """Weighted kNN (k=20, T=0.07) of the online encoder on a labeled folder (train/ and val/ ImageFolders)."""

    def __init__(self, folder: str | Path) -> None:
        from training.evaluation.data import image_folder

        self.train, self.val = image_folder(Path(folder) / "train"), image_folder(Path(folder) / "val")

    def __len__(self) -> int:
        """Images embedded per pass (what a time budget reserves time for)."""
        return len(self.train.paths) + len(self.val.paths)

    def __call__(self, backbone: BYOLModel) -> float:
        from training.evaluation.features import features_of
        from training.evaluation.knn import weighted_knn

        was_training = backbone.training
        backbone.eval()
        try:
            train = features_of(backbone, self.train.paths, ("avgpool",), "gap")["avgpool"]
            val = features_of(backbone, self.val.paths, ("avgpool",), "gap")["avgpool"]
        finally:
            backbone.train(was_training)
        return weighted_knn(train, self.train.labels, val, self.val.labels, ks=(20,))[20]


class LabelFreeMonitor:
    """RankMe (Garrido et al., ICML 2023) and the standard deviation of the L2-normalized outputs, of the online
    encoder's features on a fixed sample of images that training never sees (:func:`training.data.hold_out`).

    The sample is decoded and preprocessed once (center crop, the published model's preprocessing) and kept as
    float16 pixels: a pass is one forward of the sample, no decoding.
    """

    def __init__(self, source: ImageSource, indices: list[int], preprocessing: PreprocessConfig,
                 batch_size: int = 128) -> None:
        pixels = []
        for index in indices:
            try:
                with Image.open(io.BytesIO(source.read(index))) as img:
                    img.load()
                    pixels.append(preprocess_one(to_rgb(img), preprocessing))
            except Exception as err:  # an unreadable held-out image is left out of the sample
                logger.debug("label-free sample: skipping unreadable image %d: %s", index, err)
        if len(pixels) < 2:
            raise ValueError(f"the label-free sample has {len(pixels)} readable images; it needs at least 2")
        self.pixels = torch.from_numpy(np.stack(pixels)).half()
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.pixels)

    @torch.no_grad()
    def features(self, backbone: BYOLModel, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        param = next(backbone.parameters())
        was_training = backbone.training
        backbone.eval()
        parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        try:
            for start in range(0, len(self.pixels), self.batch_size):
                x = self.pixels[start:start + self.batch_size].to(param.device, torch.float32)
                out = backbone.features(x, layers, "gap")
                for layer in layers:
                    parts[layer].append(out[layer].float().cpu().numpy())
        finally:
            backbone.train(was_training)
        return {layer: np.concatenate(v) for layer, v in parts.items()}

    def __call__(self, backbone: BYOLModel, layers: tuple[str, ...] = ("avgpool",)) -> dict[str, dict[str, Any]]:
        """``{layer: {"rankme", "rankme_share", "std", "std_ideal", "samples", "dim"}}``."""
        return {layer: label_free(x) for layer, x in self.features(backbone, layers).items()}

    def every_layer(self, backbone: BYOLModel) -> dict[str, dict[str, Any]]:
        return self(backbone, LAYERS)
