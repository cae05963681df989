"""The OpenCV augmentation backend applies the same drawn parameters as the PIL one, with the same statistics."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import AugmentConfig, draw_view, sample_rng, two_views

pytest.importorskip("cv2")


def test_backends_consume_the_same_draws_and_are_deterministic(photos):
    cfg = AugmentConfig(size=96)
    for backend in ("pil", "opencv"):
        rng = sample_rng(0, 2, 11)
        a = two_views(photos[1], cfg, rng, backend)
        after = rng.random()
        b = two_views(photos[1], cfg, sample_rng(0, 2, 11), backend)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert a[0].shape == (96, 96, 3) and a[0].dtype == np.uint8
        if backend == "pil":
            expected_after = after
    assert after == expected_after  # the opencv path drew exactly what the pil path drew


def test_drawn_parameters_follow_the_recipe():
    cfg = AugmentConfig()
    draws = [(draw_view(sample_rng(1, 0, i), 500, 375, cfg, cfg.view1),
              draw_view(sample_rng(2, 0, i), 500, 375, cfg, cfg.view2)) for i in range(3000)]
    v1, v2 = zip(*draws)
    rate = lambda views, f: np.mean([f(d) for d in views])  # noqa: E731
    assert rate(v1, lambda d: d.blur_sigma is not None) == 1.0 and abs(rate(v2, lambda d: d.blur_sigma is not None) - 0.1) < 0.02
    assert rate(v1, lambda d: d.solarize) == 0.0 and abs(rate(v2, lambda d: d.solarize) - 0.2) < 0.025
    assert abs(rate(v1, lambda d: d.jitter is not None) - 0.8) < 0.025 and abs(rate(v1, lambda d: d.gray) - 0.2) < 0.025
    sigmas = [d.blur_sigma for d in v1]
    assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0 and abs(np.mean(sigmas) - 1.05) < 0.05
    hue = [d.jitter[1][3] for d in v1 if d.jitter]
    assert -0.1 <= min(hue) and max(hue) <= 0.1 and sorted(set(len(set(d.jitter[0])) for d in v1 if d.jitter)) == [4]


def test_output_statistics_match_the_pil_path(photos):
    cfg = AugmentConfig(size=64)
    stats = {}
    for backend in ("pil", "opencv"):
        views = [v for i in range(120) for v in two_views(photos[i % len(photos)], cfg, sample_rng(5, 0, i), backend)]
        arr = np.stack(views).astype(np.float64)
        stats[backend] = (arr.mean(axis=(0, 1, 2)), arr.std(axis=(0, 1, 2)), arr.mean(axis=(1, 2, 3)))
    (m_pil, s_pil, per_pil), (m_cv, s_cv, per_cv) = stats["pil"], stats["opencv"]
    print(f"channel means pil {m_pil.round(1)} opencv {m_cv.round(1)}; stds pil {s_pil.round(1)} opencv {s_cv.round(1)}")
    assert np.abs(m_pil - m_cv).max() < 2.0 and np.abs(s_pil - s_cv).max() < 2.0
    assert np.corrcoef(per_pil, per_cv)[0, 1] > 0.98  # the same views, view by view, not just on average


def test_opencv_decode_keeps_exif_orientation_and_skips_corrupt_files(photos, tmp_path):
    import io

    from PIL import Image

    from storage.sources import FileSource
    from training.augment import decode_rgb
    from training.data import TwoViewDataset

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    photos[1].resize((300, 200)).save(buf, "JPEG", exif=exif.tobytes())
    assert decode_rgb(buf.getvalue()).shape == (300, 200, 3)  # portrait, as PIL's exif_transpose gives
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    data = TwoViewDataset(FileSource([tmp_path / "b.jpg", tmp_path / "a.jpg"]), AugmentConfig(size=32), 0, "opencv")
    v1, v2, skipped = data[(0, 0)]
    assert skipped == 1 and v1.shape == v2.shape == (32, 32, 3)


def _jpeg(img, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def test_device_backend_draws_the_same_parameters_and_matches_the_pil_statistics(photos, tmp_path):
    import io

    import torch
    from PIL import Image

    from storage.sources import FileSource
    from training.augment import apply_pil
    from training.data import TwoViewDataset, collate_raw, device_views
    from training.device_augment import apply_views, decode_batch

    cfg = AugmentConfig(size=64)
    paths = []
    for i, img in enumerate(photos):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(_jpeg(img.resize((320, 240))))
    data = TwoViewDataset(FileSource(paths), cfg, seed=5, backend="device")
    blob, (d1, d2), skipped = data[(3, 2)]
    rng = sample_rng(5, 3, 2)
    assert (d1, d2) == (draw_view(rng, 320, 240, cfg, cfg.view1), draw_view(rng, 320, 240, cfg, cfg.view2))
    assert data[(3, 2)][1] == (d1, d2) and skipped == 0  # a function of (seed, epoch, index): resumable

    pil, dev = [], []
    for i in range(96):
        image = photos[i % len(photos)].resize((320, 240))
        blob = _jpeg(image)
        rng = sample_rng(7, 0, i)
        draws = (draw_view(rng, 320, 240, cfg, cfg.view1), draw_view(rng, 320, 240, cfg, cfg.view2))
        decoded = decode_batch([blob], torch.device("cpu"))[0]
        reference = Image.open(io.BytesIO(blob)).convert("RGB")
        for d in draws:
            pil.append(apply_pil(reference, d, cfg).astype(np.float64))
            dev.append(apply_views([decoded], [d], cfg)[0].permute(1, 2, 0).numpy() * 255.0)
    pil, dev = np.stack(pil), np.stack(dev)
    m_pil, m_dev = pil.mean(axis=(0, 1, 2)), dev.mean(axis=(0, 1, 2))
    s_pil, s_dev = pil.std(axis=(0, 1, 2)), dev.std(axis=(0, 1, 2))
    print(f"device vs pil: means {m_dev.round(1)} / {m_pil.round(1)}, stds {s_dev.round(1)} / {s_pil.round(1)}")
    assert np.abs(m_pil - m_dev).max() < 3.0 and np.abs(s_pil - s_dev).max() < 3.0
    assert np.corrcoef(pil.mean(axis=(1, 2, 3)), dev.mean(axis=(1, 2, 3)))[0, 1] > 0.98

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    batch = collate_raw([data[(0, 0)], data[(0, 1)]])
    batch = ([batch[0][0], (tmp_path / "broken.jpg").read_bytes()], batch[1], batch[2])
    v1, v2, skipped = device_views(batch, torch.device("cpu"), cfg, (0.5,) * 3, (0.25,) * 3, False)
    assert v1.shape == v2.shape == (2, 3, 64, 64) and skipped == 1  # the batch keeps its size
