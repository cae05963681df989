"""A backend that stands in for a model where the model does not matter (the batcher's scheduling)."""

import time

import numpy as np


class SlowBackend:
    """Records the batches it sees; each run takes a little while (like a real model)."""

    name, precision = "fake", "fp32"
    outputs = ["avgpool"]

    def __init__(self, delay: float = 0.05) -> None:
        self.delay, self.batches = delay, []

    def run(self, pixels):
        time.sleep(self.delay)
        self.batches.append(len(pixels))
        return {"avgpool": pixels.reshape(len(pixels), -1)[:, :4].copy()}


def pixels(n, value=0.0):
    """``n`` tiny images whose rows say which they are (image i of a request: value + i)."""
    return np.full((n, 3, 2, 2), value, np.float32) + np.arange(n, dtype=np.float32)[:, None, None, None]
