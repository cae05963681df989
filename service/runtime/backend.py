"""The backend interface: preprocessed ``pixel_values`` in, every served output out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """Runs the model. ``run`` takes ``(N, 3, H, W)`` float32 and returns ``{output: (N, D)}`` for every
    output name: ``feature1``..``feature5``, ``avgpool`` (gap) and ``featureK.mhead`` where it applies."""

    name: str
    precision: str = "fp32"

    @property
    @abstractmethod
    def outputs(self) -> list[str]:
        """Output names this backend produces."""

    @abstractmethod
    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Embed one batch (called from one worker thread at a time, or from several where the server's
        ``inference_plan`` runs streams: ONNX Runtime's CPU sessions)."""

    def warmup(self, input_size: int, batch_sizes: tuple[int, ...] = (1, 2)) -> None:
        for n in batch_sizes:
            self.run(np.zeros((n, 3, input_size, input_size), np.float32))
