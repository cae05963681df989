import json
import subprocess
import sys

import torch

from hub import BYOLModel
from hub.cli import main
from tests.hub import layouts


def test_convert_info_card_export_from_the_command_line(tmp_path, make_model, capsys):
    source = make_model(seed=4)
    torch.save(layouts.solo_learn(source.state_dict()), tmp_path / "byol.ckpt")
    out = tmp_path / "byol-r18"
    assert main(["convert", str(tmp_path / "byol.ckpt"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layout solo-learn (detected)" in printed and "Unverified" in printed
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md", "model.onnx",
                                               "transformers"}
    assert "loaders   byol, timm" in printed

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["architecture"] == "resnet18" and info["revision"].startswith("sha256:")

    (out / "README.md").unlink()
    assert main(["card", str(out)]) == 0 and (out / "README.md").exists()

    assert main(["export", str(out), "--format", "torchvision"]) == 0
    assert (out / "exports" / "resnet18_torchvision.pth").exists()
    BYOLModel.from_pretrained(out)  # still a valid folder


def test_errors_are_reported_not_raised(tmp_path, capsys):
    torch.save({"weird": torch.zeros(1)}, tmp_path / "x.pth")
    assert main(["convert", str(tmp_path / "x.pth"), str(tmp_path / "out")]) == 2
    assert "unknown checkpoint layout" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_every_command():
    text = subprocess.run([sys.executable, "-m", "hub.cli", "--help"], capture_output=True, text=True,
                          check=True).stdout
    for command in ("convert", "card", "push", "info", "export"):
        assert command in text
    text = subprocess.run([sys.executable, "-m", "hub.cli", "convert", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "--source" in text and "--zoo" in text and "--prefix" in text and "--padding" in text
