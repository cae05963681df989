"""One folder, loaded natively by timm and transformers (no trust_remote_code), and still strictly by us.

Folders are saved once per module (onnx=False). The Hub is the one thing that cannot exist here: the
``hf-hub:`` / repo-id loaders run in a subprocess against a cache laid out as huggingface_hub lays it out,
with ``HF_HUB_OFFLINE=1`` (nothing is patched).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hub import BYOLModel, ModelConfig
from hub.errors import ConfigError, WeightsIntegrityError
from hub.layers import FEATURE_LAYERS, LAYERS
from tests.support import REPO
from tests.support.models import fake_hub_cache, max_abs_diff, randomize_bn

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TOL = 2e-5  # same weights, same ops: the measured difference is 0.0 or float rounding


def _saved(root: Path, architecture: str, **config) -> tuple[BYOLModel, Path]:
    torch.manual_seed(1)
    model = BYOLModel(ModelConfig(architecture=architecture, name=f"org/byol-{architecture}", **config))
    randomize_bn(model, 1)
    model.eval()
    folder = root / architecture / config.get("stem", "imagenet") / config.get("padding", "torch")
    model.save_pretrained(folder, onnx=False)
    return model, folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    return {arch: _saved(root, arch) for arch in ("resnet18", "resnet50")}


@pytest.fixture(scope="module")
def reference(saved, pixel_batch):
    out = {}
    with torch.no_grad():
        for arch, (model, _) in saved.items():
            out[arch] = {"gap": model.features(pixel_batch, LAYERS, "gap"),
                         "none": model.features(pixel_batch, FEATURE_LAYERS, "none")}
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_timm_local_dir_loads_the_folder(saved, reference, pixel_batch, arch):
    _, folder = saved[arch]
    pooled = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    stages = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()
    with torch.no_grad():
        assert max_abs_diff(pooled(pixel_batch), reference[arch]["gap"]["avgpool"]) <= TOL
        maps = stages(pixel_batch)
    assert len(maps) == 5
    for layer, fmap in zip(FEATURE_LAYERS, maps):
        assert max_abs_diff(fmap, reference[arch]["none"][layer]) <= TOL, layer
    # a new 10-class head on the pretrained trunk
    head = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=10).eval()
    assert head.fc.out_features == 10
    with torch.no_grad():
        trunk = head.forward_head(head.forward_features(pixel_batch), pre_logits=True)
    assert max_abs_diff(trunk, reference[arch]["gap"]["avgpool"]) <= TOL
    assert pooled.pretrained_cfg["crop_pct"] == pytest.approx(224 / 256)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_transformers_automodel_and_resnetmodel_load_the_folder(saved, reference, pixel_batch, arch):
    from transformers import AutoModel, ResNetModel

    _, folder = saved[arch]
    wrapped = AutoModel.from_pretrained(folder).eval()
    assert type(wrapped).__name__ == "TimmWrapperModel"
    native, info = ResNetModel.from_pretrained(folder, subfolder="transformers", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        pooled = wrapped(pixel_values=pixel_batch).pooler_output
        out = native.eval()(pixel_values=pixel_batch, output_hidden_states=True)
    assert max_abs_diff(pooled, reference[arch]["gap"]["avgpool"]) <= TOL
    assert max_abs_diff(out.pooler_output.flatten(1), reference[arch]["gap"]["avgpool"]) <= TOL
    for layer, hidden in zip(FEATURE_LAYERS[1:], out.hidden_states[1:]):
        assert max_abs_diff(hidden, reference[arch]["none"][layer]) <= TOL, layer


HUB_SNIPPETS = r"""
import json, sys
import numpy as np, timm, torch
from PIL import Image
from transformers import AutoModel, ResNetModel, pipeline
from hub import BYOLModel
from hub.preprocess import preprocess

repo, photos = sys.argv[1], sys.argv[2:]
images = [Image.open(p).convert("RGB") for p in photos]
ours = BYOLModel.from_pretrained(repo)
x = torch.from_numpy(preprocess(images, ours.config.preprocessing))
with torch.no_grad():
    ref = ours.features(x, ("avgpool",), "gap")["avgpool"].numpy()
    got = {
        "timm": timm.create_model(f"hf-hub:{repo}", pretrained=True, num_classes=0).eval()(x).numpy(),
        "automodel": AutoModel.from_pretrained(repo).eval()(pixel_values=x).pooler_output.numpy(),
        "resnetmodel": ResNetModel.from_pretrained(repo, subfolder="transformers").eval()(pixel_values=x)
        .pooler_output.flatten(1).numpy(),
    }
extract = pipeline("image-feature-extraction", model=repo, model_kwargs={"subfolder": "transformers"})
got["pipeline"] = np.array([np.asarray(extract(img, pool=True)).reshape(-1) for img in images])
def cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(json.dumps({name: {"max_abs": float(np.abs(v - ref).max()), "min_cos": float(cos(v, ref).min())}
                  for name, v in got.items()} | {"processor": type(extract.image_processor).__name__}))
"""


@pytest.mark.slow
def test_hub_ids_load_in_every_library(saved, tmp_path, photo_paths):
    """The card's snippets, verbatim in spirit: hf-hub:/repo ids resolved from a Hub cache, offline."""
    _, folder = saved["resnet18"]
    fake_hub_cache(tmp_path / "hub", "org/byol-r18", folder)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", HUB_SNIPPETS, "org/byol-r18", *map(str, photo_paths[:3])],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"hub-id loaders vs BYOLModel avgpool: {result}")
    for name in ("timm", "automodel", "resnetmodel"):
        assert result[name]["max_abs"] <= TOL, (name, result)
    # the pipeline preprocesses with transformers' own image processor (named in the result): close, not equal
    assert result["pipeline"]["min_cos"] >= 0.999, result


def test_our_loader_accepts_the_keys_it_writes_and_checks_them(saved, tmp_path):
    _, folder = saved["resnet18"]
    data = json.loads((folder / "config.json").read_text())
    assert {"num_classes", "num_features", "pretrained_cfg"} <= set(data) and "model_type" not in data
    assert data["architecture"] == "resnet18" and data["pretrained_cfg"]["classifier"] == "fc"
    assert data["transformers"]["sha256"].keys() == {"config.json", "model.safetensors", "preprocessor_config.json",
                                                     "processor_config.json"}
    BYOLModel.from_pretrained(folder)

    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    bad = dict(data, pretrained_cfg={**data["pretrained_cfg"], "mean": [0.5, 0.5, 0.5]})
    (edited / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="timm keys disagree.*mean"):
        BYOLModel.from_pretrained(edited)
    (edited / "config.json").write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['surprise'\]"):
        BYOLModel.from_pretrained(edited)

    (edited / "config.json").write_text(json.dumps(data))
    tampered = edited / "transformers" / "model.safetensors"
    tampered.write_bytes(tampered.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsIntegrityError, match="transformers/model.safetensors"):
        BYOLModel.from_pretrained(edited)


@pytest.mark.parametrize("config", [{"stem": "cifar"}, {"padding": "tf_same"}], ids=["cifar-stem", "tf_same"])
def test_models_the_loaders_cannot_express_say_why(tmp_path, config):
    from huggingface_hub import ModelCard

    _, folder = _saved(tmp_path, "resnet18", **config)
    data = json.loads((folder / "config.json").read_text())
    assert "pretrained_cfg" not in data and not (folder / "transformers").exists()
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "byol"
    assert "timm and transformers cannot load this model" in card.text
    assert ("CIFAR stem" if "stem" in config else "tf_same") in card.text
    BYOLModel.from_pretrained(folder)


def test_card_names_timm_and_shows_the_snippets(saved):
    from huggingface_hub import ModelCard

    _, folder = saved["resnet50"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-feature-extraction"
    assert {"timm", "transformers"} <= set(card.data.tags)
    for snippet in ('timm.create_model("hf-hub:org/byol-resnet50", pretrained=True, num_classes=0)',
                    'AutoModel.from_pretrained("org/byol-resnet50")',
                    'ResNetModel.from_pretrained("org/byol-resnet50", subfolder="transformers")',
                    'pipeline("image-feature-extraction", model="org/byol-resnet50", '
                    'model_kwargs={"subfolder": "transformers"})'):
        assert snippet in card.text, snippet


def test_without_the_subfolder_timm_still_loads_and_the_card_says_so(tmp_path, pixel_batch):
    torch.manual_seed(0)
    model = BYOLModel(ModelConfig(architecture="resnet18")).eval()
    model.save_pretrained(tmp_path / "m", transformers=False)
    assert not (tmp_path / "m" / "transformers").exists()
    assert "saved without the `transformers/` subfolder" in (tmp_path / "m" / "README.md").read_text()
    big = BYOLModel(ModelConfig(architecture="resnet18", preprocessing={"resize_size": 438, "crop_size": 384}))
    big.save_pretrained(tmp_path / "big", onnx=False)  # BitImageProcessor center-crops at any size
    assert (tmp_path / "big" / "transformers" / "processor_config.json").exists()
    assert "saved without the `transformers/` subfolder" not in (tmp_path / "big" / "README.md").read_text()
    # re-saving with the subfolder and then without it removes the stale one
    model.save_pretrained(tmp_path / "m2")
    assert (tmp_path / "m2" / "transformers" / "model.safetensors").exists()
    model.save_pretrained(tmp_path / "m2", transformers=False)
    assert not (tmp_path / "m2" / "transformers").exists()
    net = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert max_abs_diff(net(pixel_batch), model.features(pixel_batch)["avgpool"]) <= TOL


def test_converted_folders_and_the_timm_export_load_in_timm(saved, tmp_path, pixel_batch, reference):
    from hub.cli import main

    source, _ = saved["resnet18"]
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "mm.pth")
    assert main(["convert", str(tmp_path / "mm.pth"), str(tmp_path / "conv"), "--no-onnx"]) == 0
    assert (tmp_path / "conv" / "transformers" / "preprocessor_config.json").exists()
    assert main(["export", str(tmp_path / "conv"), "--format", "timm", "--output", str(tmp_path / "timm")]) == 0
    for folder in (tmp_path / "conv", tmp_path / "timm"):
        net = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
        with torch.no_grad():
            assert max_abs_diff(net(pixel_batch), reference["resnet18"]["gap"]["avgpool"]) <= TOL
    head = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True, num_classes=10)
    assert head.fc.out_features == 10


def test_transformers_preprocessor_spells_every_value(saved):
    """Both of transformers' files say the same, every value spelled out (no release's default enters)."""
    sub = saved["resnet50"][1] / "transformers"
    pre = json.loads((sub / "preprocessor_config.json").read_text())
    assert json.loads((sub / "processor_config.json").read_text()) == {"image_processor": pre}
    assert pre["image_processor_type"] == "BitImageProcessor"
    assert pre["size"] == {"shortest_edge": 256} and pre["crop_size"] == {"height": 224, "width": 224}
    assert pre["do_resize"] and pre["do_center_crop"] and pre["do_rescale"] and pre["do_normalize"]
    assert pre["image_mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["resample"] == 2
    assert np.isclose(pre["rescale_factor"], 1 / 255)
