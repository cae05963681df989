"""transformers reads the ``transformers/`` subfolder's image processor as our preprocessing, by every route a
user takes, in the installed release. CI runs this file once more against the floor in ``pyproject.toml``
(``.ci/run``), so a release that changes how it finds or reads the file fails here with the field that moved,
not as a low cosine somewhere downstream.

Routes: a local folder with ``subfolder=`` (what the card shows; from transformers 5.25 on, a local root whose
``config.json`` is timm's makes transformers read the subfolder's ``config.json`` unless the nested
``processor_config.json`` is there), the subfolder's own path, a Hub id resolved from a cache laid out as
huggingface_hub lays it out, and ``pipeline("image-feature-extraction")``.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hub import BYOLModel, ModelConfig
from hub.config import PreprocessConfig
from hub.interop import PIL_RESAMPLE, TRANSFORMERS_DIR
from hub.preprocess import normalize_chw, preprocess, resize_shorter
from tests.support.models import fake_hub_cache

transformers = pytest.importorskip("transformers")

PREPROCESSINGS = {
    "imagenet-224": PreprocessConfig(),
    "smoke-64-bicubic": PreprocessConfig(resize_size=73, crop_size=64, interpolation="bicubic"),
    "crop-384": PreprocessConfig(resize_size=438, crop_size=384),  # ConvNextImageProcessor would warp here
    "own-mean-std": PreprocessConfig(resize_size=160, crop_size=128, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
}
ROUTES = ("root+subfolder", "subfolder-path", "hub-id+subfolder", "pipeline")
# two 8-bit levels after normalization (2/255/std, std >= 0.2): transformers' torchvision backend resizes with
# torch's kernels, whose bicubic lands up to two levels from PIL's on a few pixels (bilinear: one)
TOLERANCE = 2 / 255 / 0.2 + 1e-6


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[PreprocessConfig, object]]:
    root = tmp_path_factory.mktemp("processors")
    out = {}
    for name, pre in PREPROCESSINGS.items():
        folder = root / name
        BYOLModel(ModelConfig(architecture="resnet18", name=f"org/{name}", preprocessing=pre)).save_pretrained(
            folder, onnx=False, card=False)
        fake_hub_cache(root / "hub", f"org/{name}", folder)
        out[name] = (pre, folder)
    return out


@pytest.fixture(scope="module")
def images(photos) -> list[Image.Image]:
    """Real photos, landscape and portrait, plus a thin strip and one whose crop margin is odd."""
    return [*photos[:4], photos[0].resize((301, 97)), photos[1].resize((97, 301)), photos[2].resize((640, 427))]


def _processor(route: str, name: str, folder, cache):
    from transformers import AutoImageProcessor, pipeline

    if route == "root+subfolder":
        return AutoImageProcessor.from_pretrained(folder, subfolder=TRANSFORMERS_DIR)
    if route == "subfolder-path":
        return AutoImageProcessor.from_pretrained(folder / TRANSFORMERS_DIR)
    if route == "hub-id+subfolder":
        return AutoImageProcessor.from_pretrained(f"org/{name}", subfolder=TRANSFORMERS_DIR, cache_dir=cache,
                                                  local_files_only=True)
    return pipeline("image-feature-extraction", model=str(folder), model_kwargs={"subfolder": TRANSFORMERS_DIR},
                    ).image_processor


def _value(container, key: str):
    return container[key] if isinstance(container, dict) else getattr(container, key)


def _fields(processor) -> dict[str, object]:
    """The values that decide the pixels, as transformers holds them after loading."""
    return {
        "type": type(processor).__name__,
        "do_resize": processor.do_resize,
        "resize of the shorter side (size.shortest_edge)": _value(processor.size, "shortest_edge"),
        "interpolation (resample)": int(processor.resample),
        "do_center_crop": processor.do_center_crop,
        "center crop (crop_size)": (_value(processor.crop_size, "height"), _value(processor.crop_size, "width")),
        "rescale_factor": round(float(processor.rescale_factor), 9),
        "image_mean": tuple(round(float(v), 6) for v in processor.image_mean),
        "image_std": tuple(round(float(v), 6) for v in processor.image_std),
    }


def _expected(pre: PreprocessConfig) -> dict[str, object]:
    return {
        "type": "BitImageProcessor",
        "do_resize": True,
        "resize of the shorter side (size.shortest_edge)": pre.resize_size,
        "interpolation (resample)": PIL_RESAMPLE[pre.interpolation],
        "do_center_crop": True,
        "center crop (crop_size)": (pre.crop_size, pre.crop_size),
        "rescale_factor": round(1 / 255, 9),
        "image_mean": tuple(round(v, 6) for v in pre.mean),
        "image_std": tuple(round(v, 6) for v in pre.std),
    }


def _floor_crop(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """Our preprocessing with transformers' crop offset, ``(side - crop) // 2``: where the margin is odd,
    torchvision (and we) round half to even, transformers rounds down, one pixel apart. No config can say it."""
    img = resize_shorter(img, pre.resize_size, pre.interpolation)
    left, top = (img.width - pre.crop_size) // 2, (img.height - pre.crop_size) // 2
    return normalize_chw(np.asarray(img.crop((left, top, left + pre.crop_size, top + pre.crop_size))), pre)


@pytest.mark.parametrize("route", ROUTES)
def test_transformers_reads_our_preprocessing_by_every_route(folders, images, route, tmp_path_factory):
    version = transformers.__version__
    cache = next(iter(folders.values()))[1].parent / "hub"
    for name, (pre, folder) in folders.items():
        processor = _processor(route, name, folder, cache)
        got, want = _fields(processor), _expected(pre)
        got["type"] = got["type"].removesuffix("Pil").removesuffix("Fast")  # the backend, not the recipe
        moved = {key: f"read {got[key]!r}, ours is {want[key]!r}" for key in want if got[key] != want[key]}
        assert not moved, f"transformers {version}, {route}, {name}: the image processor differs from our " \
                          f"preprocessing in {moved}"

        pixels = processor(images, return_tensors="np")["pixel_values"]
        ours = preprocess(images, pre)
        assert pixels.shape == ours.shape, f"transformers {version}, {route}, {name}: pixel_values {pixels.shape}, " \
                                           f"ours {ours.shape}"
        for i, img in enumerate(images):
            diff = min(np.abs(pixels[i] - ours[i]).max(), np.abs(pixels[i] - _floor_crop(img, pre)).max())
            assert diff <= TOLERANCE, f"transformers {version}, {route}, {name}: image {i} ({img.size}) differs by " \
                                  f"{diff:.4f} after normalization (at most two 8-bit levels are expected)"


def test_a_folder_from_before_the_nested_file_is_named_and_a_resave_mends_it(tmp_path, caplog):
    """Folders published before processor_config.json existed load with a warning that says what breaks and how
    to mend it; re-saving in place writes the nested file and the route that broke reads our values again."""
    from transformers import AutoImageProcessor

    folder = tmp_path / "old"
    BYOLModel(ModelConfig(architecture="resnet18")).save_pretrained(folder, onnx=False, card=False)
    (folder / TRANSFORMERS_DIR / "processor_config.json").unlink()
    with caplog.at_level("WARNING", logger="hub"):
        model = BYOLModel.from_pretrained(folder)
    assert "has no processor_config.json" in caplog.text and "save_pretrained(folder)" in caplog.text
    model.save_pretrained(folder, onnx=False, card=False)
    processor = AutoImageProcessor.from_pretrained(folder, subfolder=TRANSFORMERS_DIR)
    assert _value(processor.size, "shortest_edge") == 256 and _value(processor.crop_size, "height") == 224
