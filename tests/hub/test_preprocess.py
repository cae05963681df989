import io

import numpy as np
import pytest
from PIL import Image

from hub.config import PreprocessConfig
from hub.errors import ImageDecodeError
from hub.preprocess import decode_image, normalize_chw, preprocess


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_matches_torchvision_eval_transform(photos):
    from torchvision import transforms as T

    tv = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ours = preprocess(photos, PreprocessConfig())
    assert ours.shape == (len(photos), 3, 224, 224) and ours.dtype == np.float32
    for i, img in enumerate(photos):
        assert np.abs(tv(img).numpy() - ours[i]).max() < 1e-5


def test_table_normalization_is_bit_identical_to_the_elementwise_formula(photos):
    """The per-level table gives exactly (x / 255 - mean) / std in float32, channel first, for every level."""
    cfg = PreprocessConfig(mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.7))
    levels = np.arange(256, dtype=np.uint8)
    images = [np.asarray(photos[0].convert("RGB")), np.stack([levels.reshape(16, 16)] * 3, axis=-1)]
    for rgb in images:
        formula = (rgb.astype(np.float32) * np.float32(1 / 255) - np.asarray(cfg.mean, np.float32)) / \
            np.asarray(cfg.std, np.float32)
        got = normalize_chw(rgb, cfg)
        assert got.shape == (3, *rgb.shape[:2]) and got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, formula.transpose(2, 0, 1))


def test_exif_orientation_is_applied(photos):
    img = photos[0].resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (200, 300)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16", "1"])
def test_unusual_modes_become_rgb(photos, mode):
    base = photos[1].resize((64, 48))
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(_bytes(img, fmt))
    assert decoded.mode == "RGB" and decoded.size == (64, 48)
    if mode == "I;16":  # 16-bit is scaled down, not clipped to white
        assert abs(np.asarray(decoded).mean() - np.asarray(base.convert("L")).mean()) < 2


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue())
    assert decoded.getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("data, match", [
    (b"", "0 bytes"),
    (b"hello, I am text posing as a PNG", "not a decodable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a decodable image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "not a decodable image"),
])
def test_bad_bytes_raise_clear_errors(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data)


def test_truncated_jpeg_is_refused(photos):
    data = _bytes(photos[0], "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 3])


def test_pixel_limit_is_checked_before_decoding():
    data = _bytes(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(ImageDecodeError, match="limit") as info:
        decode_image(data, max_pixels=1_000_000)
    assert info.value.too_large


def _phone_jpeg(img, orientation: int | None = None) -> bytes:
    big = img.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    big.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_reduced_scale_jpeg_decode_is_opt_in_close_and_keeps_exif_orientation(photos):
    from hub.preprocess import preprocess_one

    cfg = PreprocessConfig()
    blob = _phone_jpeg(photos[1], orientation=6)  # rotate 90 degrees on display
    exact, fast = decode_image(blob), decode_image(blob, draft_min_side=cfg.resize_size)
    assert exact.size == (3024, 4032) and fast.size == (378, 504)  # portrait after EXIF; 1/8 scale when drafted
    a, b = preprocess_one(exact, cfg), preprocess_one(fast, cfg)
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.05  # same picture, slightly different pixels
    small = _bytes(photos[0].resize((400, 300)), "JPEG")  # under twice the resize target: always exact
    assert np.array_equal(np.asarray(decode_image(small)), np.asarray(decode_image(small, draft_min_side=256)))


def test_jpeg_scans_are_counted_by_segment(photos):
    """Baseline 1 scan, libjpeg-turbo's progression 10 (6 for grey); an EXIF thumbnail's own scans (a whole
    progressive JPEG inside APP1) are not the image's."""
    from hub.preprocess import jpeg_scans

    photo = photos[0].convert("RGB")
    assert jpeg_scans(_bytes(photo, "JPEG")) == 1
    assert jpeg_scans(_bytes(photo, "JPEG", progressive=True)) == 10
    assert jpeg_scans(_bytes(photo.convert("L"), "JPEG", progressive=True)) == 6
    thumbnail = _bytes(photo.resize((160, 120)), "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 1
    with_thumb = _bytes(photo, "JPEG", exif=exif.tobytes() + thumbnail[:60000])  # bytes with FF DA inside APP1
    assert with_thumb.count(b"\xff\xda") > 1 and jpeg_scans(with_thumb) == 1


def test_a_jpeg_of_a_thousand_scans_is_refused_before_its_pixels_are_decoded():
    """1,000 scans of a 3000² image: ~11 s to decode; refused from its header in milliseconds."""
    import time

    from hub.preprocess import MAX_JPEG_SCANS
    from tests.support.images import scan_bomb

    bomb = scan_bomb(3000, 1000)
    assert len(bomb) < 100_000
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=f"more than {MAX_JPEG_SCANS} scans") as info:
        decode_image(bomb)
    assert info.value.too_large and time.perf_counter() - started < 1.0
    # at the cap, still decoded: a progressive JPEG with many scans is valid
    assert decode_image(scan_bomb(64, MAX_JPEG_SCANS - 10)).size == (64, 64)
