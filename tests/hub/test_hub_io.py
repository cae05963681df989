import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub import BYOLModel
from hub.config import ModelConfig
from hub.errors import ModelNotFoundError, WeightsIntegrityError, WeightsMismatchError
from tests.support.models import fake_hub_cache


def test_save_and_load_round_trip(tmp_path, make_model, pixel_batch):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                  "transformers"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format_version"] == 1 and config["architecture"] == "resnet18"
    assert config["layers"]["avgpool"]["gap"] == 512 and config["preprocessing"]["crop_size"] == 224
    loaded = BYOLModel.from_pretrained(tmp_path / "m")
    assert not loaded.training
    assert loaded.source["revision"] == "sha256:" + config["weights_sha256"][:12]
    with torch.no_grad():
        a = model.features(pixel_batch, ("feature2", "avgpool"))
        b = loaded.features(pixel_batch, ("feature2", "avgpool"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tamper(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("layer4.1.bn2.running_var"), "1 missing key.*layer4.1.bn2.running_var"),
    (lambda s: s.update({"fc.weight": torch.zeros(10, 512)}), "1 unexpected key.*fc.weight"),
    (lambda s: s.update({"conv1.weight": torch.zeros(64, 3, 3, 3)}), "mis-shaped.*conv1.weight"),
])
def test_loading_is_strict_and_names_the_keys(tmp_path, make_model, edit, match):
    make_model().save_pretrained(tmp_path / "m")
    _tamper(tmp_path / "m", edit)
    with pytest.raises(WeightsMismatchError, match=match):
        BYOLModel.from_pretrained(tmp_path / "m", verify_sha256=False)


def test_weights_that_do_not_match_the_config_hash_are_refused(tmp_path, make_model):
    make_model().save_pretrained(tmp_path / "m")
    _tamper(tmp_path / "m", lambda s: s["conv1.weight"].mul_(2))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        BYOLModel.from_pretrained(tmp_path / "m")


def test_hand_written_readme_is_kept(tmp_path, make_model):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("# my own card\n")
    make_model().save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "README.md").read_text() == "# my own card\n"


def test_failed_save_leaves_the_previous_model_intact(tmp_path, make_model, monkeypatch):
    make_model(seed=0).save_pretrained(tmp_path / "m")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ModelConfig, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        make_model(seed=1).save_pretrained(tmp_path / "m")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert after == before
    BYOLModel.from_pretrained(tmp_path / "m")


def test_from_pretrained_resolves_hub_ids_from_the_cache(tmp_path, make_model, pixel_batch):
    cache = tmp_path / "hf-cache"
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    commit_a, commit_b = "a" * 40, "b" * 40
    fake_hub_cache(cache, "org/byol-r18", tmp_path / "m", commit_a)
    make_model(seed=5).save_pretrained(tmp_path / "m2")
    fake_hub_cache(cache, "org/byol-r18", tmp_path / "m2", commit_b, ref="v2")

    loaded = BYOLModel.from_pretrained("org/byol-r18", cache_dir=cache, local_files_only=True)
    assert loaded.source == {"id": "org/byol-r18", "revision": commit_a, "folder": loaded.source["folder"]}
    with torch.no_grad():
        assert torch.equal(loaded(pixel_batch), model(pixel_batch))
    other = BYOLModel.from_pretrained("org/byol-r18", revision="v2", cache_dir=cache, local_files_only=True)
    assert other.source["revision"] == commit_b
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        BYOLModel.from_pretrained("org/missing", cache_dir=cache, local_files_only=True)
    with pytest.raises(ModelNotFoundError, match="neither a model folder"):
        BYOLModel.from_pretrained(str(tmp_path / "no-such-folder"))


def test_a_pickle_in_a_hub_repo_is_never_loaded(tmp_path, make_model):
    cache = tmp_path / "hf-cache"
    make_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save({}, tmp_path / "m" / "pytorch_model.bin")
    fake_hub_cache(cache, "org/pickled", tmp_path / "m", "c" * 40)
    with pytest.raises(ModelNotFoundError):
        BYOLModel.from_pretrained("org/pickled", cache_dir=cache, local_files_only=True)


def test_push_to_hub_uploads_one_folder(tmp_path, make_model, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, *, repo_id, folder_path, revision, commit_message, allow_patterns):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload_folder", repo_id, files, commit_message))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/123",
                                              commit_message=commit_message, commit_description="", oid="123")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = make_model().push_to_hub("org/byol-r18", token="hf_x", onnx=False)
    assert url.endswith("/commit/123")
    assert calls[0] == ("create_repo", "org/byol-r18", True)
    assert calls[1][0] == "upload_folder"
    assert calls[1][2] == ["README.md", "config.json", "model.safetensors", "transformers"]
