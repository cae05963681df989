"""The factory's streamed backend: the embedding job's one batch at a time, split over the inference plan's
streams."""

import numpy as np

from service.runtime.factory import StreamedBackend
from tests.support.backends import SlowBackend, pixels


def test_streamed_backend_splits_a_batch_and_gives_its_rows_in_order():
    inner = SlowBackend(delay=0.0)
    streamed = StreamedBackend(inner, 2)
    batch = pixels(7)
    out = streamed.run(batch)
    assert sorted(inner.batches) == [3, 4]  # two slices, run at once
    assert np.array_equal(out["avgpool"], batch.reshape(7, -1)[:, :4])
    assert streamed.run(pixels(1))["avgpool"].shape == (1, 4) and inner.batches[-1] == 1
