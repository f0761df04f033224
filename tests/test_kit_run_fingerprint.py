"""Saved kits that embed with a run record its weights' fingerprint and refuse to load once
the run's model has changed."""

import json
import shutil

import numpy as np
import pytest
import torch

from dmlkit.apps import FewShotClassifier, Identifier, MetricOutlierDetector, Verifier
from dmlkit.apps.persistence import StaleKitError, run_fingerprint

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "training": {"epochs": 1, "progress": False},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.runs import build_splits, load_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("fingerprint")
    train_run(Config.from_dict(TINY), root / "run", log=lambda *a: None)
    _, heldout = build_splits(load_run(root / "run").config)
    return root, heldout.x.numpy(), heldout.labels.numpy()


def fitted(kind, run_dir, x, y):
    if kind == "verifier":
        return Verifier(embedder=str(run_dir), n_bootstrap=5).fit(x, y)
    if kind == "identifier":
        return Identifier(embedder=str(run_dir), target_far=0.1).fit(x, y)
    if kind == "fewshot":
        return FewShotClassifier(embedder=str(run_dir)).fit(x, y)
    return MetricOutlierDetector(embedder=str(run_dir)).fit(x)


def perturb_weights(run_dir):
    """Resume-like change of a run's model: same architecture, other weights."""
    path = run_dir / "model.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, path)


KINDS = ["verifier", "identifier", "fewshot", "outliers"]
CLASSES = {"verifier": Verifier, "identifier": Identifier, "fewshot": FewShotClassifier,
           "outliers": MetricOutlierDetector}


@pytest.mark.parametrize("kind", KINDS)
def test_a_kit_refuses_a_run_whose_weights_changed(trained, tmp_path, kind):
    root, x, y = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    kit = fitted(kind, run, x, y)
    kit.save(tmp_path / "kit")
    manifest = json.loads((tmp_path / "kit" / "manifest.json").read_text())
    assert manifest["model_sha256"] == run_fingerprint(run)
    CLASSES[kind].load(tmp_path / "kit")  # unchanged run: loads
    perturb_weights(run)
    with pytest.raises(StaleKitError, match="weights have changed since") as info:
        CLASSES[kind].load(tmp_path / "kit")
    assert "save it again" in str(info.value)
    if kind in ("identifier", "fewshot"):  # (a gallery or support set to enroll again)
        assert "re-enroll" in str(info.value)


def test_a_kit_whose_run_is_gone_says_so(trained, tmp_path):
    root, x, y = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    Verifier(embedder=str(run), n_bootstrap=5).fit(x, y).save(tmp_path / "kit")
    shutil.rmtree(run)
    with pytest.raises(StaleKitError, match="cannot be loaded now"):
        Verifier.load(tmp_path / "kit")


def test_an_older_kit_without_fingerprint_loads_with_a_warning(trained, tmp_path):
    root, x, y = trained
    Verifier(embedder=str(root / "run"), n_bootstrap=5).fit(x, y).save(tmp_path / "kit")
    path = tmp_path / "kit" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["model_sha256"]
    path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="records no fingerprint"):
        v = Verifier.load(tmp_path / "kit")
    assert np.isfinite(v.threshold_)


def test_kits_on_features_record_no_fingerprint(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 4))
    y = np.repeat(np.arange(4), 10)
    Verifier(n_bootstrap=5).fit(x, y).save(tmp_path / "kit")
    assert "model_sha256" not in json.loads((tmp_path / "kit" / "manifest.json").read_text())
    Verifier.load(tmp_path / "kit")
