import json

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from hub.card import render_card
from hub.config import ModelConfig
from hub.convert.checkpoint import convert_checkpoint
from tests.hub import layouts


@pytest.fixture()
def zoo_card(tmp_path, make_model):
    source = make_model("resnet50", seed=2)
    path = tmp_path / "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth"
    torch.save(layouts.mmselfsup(source.state_dict()), path)
    model = convert_checkpoint(path, zoo="byol-r50-ep200", name="org/byol-r50-ep200")
    model.save_pretrained(tmp_path / "out")
    return (tmp_path / "out" / "README.md").read_text()


def test_zoo_card_parses_and_carries_the_seed_results(zoo_card):
    card = ModelCard(zoo_card)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-feature-extraction" and data["library_name"] == "timm"  # the Hub widget keys on it: timm loads the folder
    assert {"self-supervised", "byol"} <= set(data["tags"]) and data["license"] == "apache-2.0"
    assert data["datasets"] == ["imagenet-1k"]
    metrics = [(r.dataset_name, r.metric_config, r.metric_value) for r in card.data.eval_results]
    assert ("ImageNet-1k", "avgpool", 71.72) in metrics and ("ImageNet-1k", "feature1", 15.16) in metrics
    assert ("Places205", "feature5", 53.82) in metrics and ("VOC2007", "feature5", 86.31) in metrics
    values = {r.metric_type: r.metric_value for r in card.data.eval_results if r.dataset_name == "COCO2017"}
    assert values["box_map"] == 40.9 and values["mask_ap75"] == 39.5
    assert all("seed-reported" in r.metric_name for r in card.data.eval_results)
    assert len(card.data.eval_results) == 6 + 5 + 1 + 8 + 1 + 3 + 3 + 1


def test_zoo_card_shows_the_seed_tables_labeled(zoo_card):
    assert "| seed-reported | 15.16 | 35.26 | 47.77 | 63.10 | 71.21 | 71.72 |" in zoo_card
    assert "| seed-reported | 21.25 | 36.55 | 43.66 | 50.74 | 53.82 |" in zoo_card
    assert "| seed-reported | 86.31 | 45.37 | 56.83 | 68.47 | 74.12 | 78.30 | 81.53 | 83.56 | 84.73 |" in zoo_card
    assert "| seed-reported | 80.35 |" in zoo_card and "| seed-reported | 67.16 |" in zoo_card
    assert "not re-measured" in zoo_card
    assert "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200" in zoo_card
    assert "@inproceedings{grill2020bootstrap" in zoo_card


def test_card_is_honest_about_identity_and_terms(zoo_card):
    # the file is named like the MMSelfSup release but its hash differs: unverified, said plainly
    assert "Unverified" in zoo_card and "de817331" in zoo_card
    assert "has its own terms of use" in zoo_card and "`apache-2.0`" in zoo_card
    assert "| `feature1` | stem (conv1/bn1/relu), before max-pool | 64 | 9216 |" in zoo_card


def test_ep300_card_notes_where_its_numbers_come_from():
    card = render_card(ModelConfig(zoo="byol-r50-ep300", name="org/byol-r50-ep300"))
    assert "72.93" in card and "| seed-reported | 15.41 | 35.15 | 47.77 | 62.59 | 71.85 | 71.88 |" in card


def test_measured_results_sit_beside_the_seed_numbers(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "linear.json").write_text(json.dumps({"results": [
        {"protocol": "linear", "task": "image-classification", "dataset": "ImageNet-1k", "metric": "top1",
         "value": 70.5, "std": 0.2, "layer": "avgpool", "mode": "fast"}]}))
    card = render_card(ModelConfig(zoo="byol-r50-ep200"), tmp_path)
    assert "| measured (fast) | – | – | – | – | – | 70.50 ± 0.20 |" in card
    front = yaml.safe_load(card.split("---")[1])
    names = [m["name"] for r in front["model-index"][0]["results"] for m in r["metrics"]]
    assert any("measured" in n for n in names) and any("seed-reported" in n for n in names)


def test_demo_models_say_so():
    card = render_card(ModelConfig(architecture="resnet18", demo=True, zoo=None))
    assert "**Demo model.**" in card and "No evaluation results yet." in card
    assert "demo" in ModelCard(card).data.tags
