"""Kits fitted on embedding files (``verify`` / ``identify --save`` without a run) record the
fingerprint of the model that embedded them, and embeddings of another model are refused
where both fingerprints are known (a loaded kit, and ``dmlkit serve --verifier``)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
KEY = "h" * 24 + "-guard-key"
TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "training": {"epochs": 1, "progress": False},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two runs of one config with other seeds, and their embeddings (dmlkit embed)."""
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("guard_kits")
    for name, seed in (("a", 0), ("b", 7)):
        cfg = {**TINY, "training": {**TINY["training"], "seed": seed}}
        train_run(Config.from_dict(cfg), root / name, log=lambda *a: None)
        for split in ("heldout", "train"):
            res = runner.invoke(app, ["embed", str(root / name), "--data", split, "--out",
                                      str(root / f"{name}_{split}.npz")])
            assert res.exit_code == 0, res.output
    (root / "keys.txt").write_text(KEY + "\n")
    return root


def recorded(kit) -> str | None:
    return json.loads((kit / "manifest.json").read_text()).get("model_sha256")


def sha(path) -> str:
    from dmlkit.index.provenance import embeddings_fingerprint

    return embeddings_fingerprint(path)


def test_verify_save_records_the_model_of_its_embeddings(files, tmp_path):
    from dmlkit.apps import Verifier
    from dmlkit.apps.persistence import check_kit_model

    own, other = files / "a_heldout.npz", files / "b_heldout.npz"
    assert sha(own) != sha(other)
    res = runner.invoke(app, ["verify", "--data", str(own), "--bootstrap", "5", "--out",
                              str(tmp_path / "v.json"), "--save", str(tmp_path / "kit")])
    assert res.exit_code == 0, res.output
    assert recorded(tmp_path / "kit") == sha(own)
    kit = Verifier.load(tmp_path / "kit")
    assert kit.model_sha256_ == sha(own)
    check_kit_model(kit, sha(own), str(own))  # its own model's embeddings pass
    check_kit_model(kit, None, "an unknown file")  # nothing to compare
    with pytest.raises(ValueError, match="fitted on embeddings of another model than"):
        check_kit_model(kit, sha(other), str(other))


def test_verify_with_calibration_records_the_model(files, tmp_path):
    res = runner.invoke(app, ["verify", "--data", str(files / "a_heldout.npz"), "--calibrate",
                              str(files / "a_train.npz"), "--bootstrap", "5", "--out",
                              str(tmp_path / "v.json"), "--save", str(tmp_path / "kit")])
    assert res.exit_code == 0, res.output
    assert recorded(tmp_path / "kit") == sha(files / "a_train.npz")


def test_identify_save_records_the_model_of_its_gallery(files, tmp_path):
    from dmlkit.apps import Identifier
    from dmlkit.apps.persistence import check_kit_model

    res = runner.invoke(app, ["identify", "--gallery", str(files / "a_train.npz"), "--query",
                              str(files / "a_heldout.npz"), "--closed-set", "--out",
                              str(tmp_path / "i.json"), "--save", str(tmp_path / "kit")])
    assert res.exit_code == 0, res.output
    assert recorded(tmp_path / "kit") == sha(files / "a_train.npz")
    kit = Identifier.load(tmp_path / "kit")
    with pytest.raises(ValueError, match="another model"):
        check_kit_model(kit, sha(files / "b_heldout.npz"), "b_heldout.npz")


def test_files_without_a_fingerprint_save_a_kit_without_one(tmp_path):
    from dmlkit.apps import Verifier

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(40, 4)),
             labels=np.repeat(np.arange(4), 10))
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "e.npz"), "--bootstrap", "5",
                              "--out", str(tmp_path / "v.json"), "--save", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    assert recorded(tmp_path / "k") is None
    assert Verifier.load(tmp_path / "k").model_sha256_ is None


def test_fewshot_kits_record_a_given_fingerprint(tmp_path):
    from dmlkit.apps import FewShotClassifier

    rng = np.random.default_rng(0)
    clf = FewShotClassifier().fit(rng.normal(size=(20, 4)), np.repeat(np.arange(4), 5))
    clf.save(tmp_path / "k", model_sha256="ab" * 32)
    assert FewShotClassifier.load(tmp_path / "k").model_sha256_ == "ab" * 32
    with pytest.raises(TypeError, match="model_sha256 must be a string"):
        clf.save(tmp_path / "k2", model_sha256=123)


def test_a_run_kit_refuses_another_models_fingerprint(files, tmp_path):
    from dmlkit.apps import FewShotClassifier
    from dmlkit.apps.persistence import run_fingerprint
    from dmlkit.runs import build_splits, load_run

    _, heldout = build_splits(load_run(files / "a").config)
    clf = FewShotClassifier(embedder=str(files / "a")).fit(heldout.x.numpy(),
                                                           heldout.labels.numpy())
    with pytest.raises(ValueError, match="records that run's fingerprint"):
        clf.save(tmp_path / "k", model_sha256=sha(files / "b_heldout.npz"))
    clf.save(tmp_path / "k", model_sha256=run_fingerprint(files / "a"))  # the same: fine
    assert recorded(tmp_path / "k") == run_fingerprint(files / "a")


def test_serve_refuses_a_verifier_fitted_on_another_models_embeddings(files, tmp_path,
                                                                     monkeypatch):
    pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: None)  # (a start is not served)
    kit = tmp_path / "kit"
    res = runner.invoke(app, ["verify", "--data", str(files / "b_heldout.npz"), "--bootstrap",
                              "5", "--out", str(tmp_path / "v.json"), "--save", str(kit)])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "f"
    assert runner.invoke(app, ["index", "build", str(files / "a"), "--out",
                               str(folder / "idx")]).exit_code == 0
    before = sorted(os.listdir(folder))

    def serve(*extra):
        return runner.invoke(app, ["serve", "--index", str(folder / "idx"), "--api-keys-file",
                                   str(files / "keys.txt"), "--port", "0", "--verifier",
                                   str(kit), *extra])

    res = serve("--run", str(files / "a"))  # the served model is a's, the kit b's
    assert res.exit_code == 1, res.output
    lines = [s for s in res.stderr.splitlines() if s.startswith("error:")]
    assert len(lines) == 1 and "the verifier was fitted on embeddings of another model" in \
        lines[0], res.output
    assert sorted(os.listdir(folder)) == before
    # without a model, the served space is the index's (built with a's model): refused too
    res = serve()
    assert res.exit_code == 1 and "another model than those the index holds" in res.stderr


def test_the_scorer_accepts_a_verifier_of_the_served_model(files, tmp_path):
    pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
    from dmlkit.apps import Verifier
    from dmlkit.service import load_embedder
    from dmlkit.service.provenance import VerifierScorer

    arrays = np.load(files / "a_heldout.npz")
    Verifier(n_bootstrap=5).fit(arrays["embeddings"], arrays["labels"]).save(
        tmp_path / "kit", model_sha256=sha(files / "a_heldout.npz"))
    kit = Verifier.load(tmp_path / "kit")
    VerifierScorer(kit, load_embedder(files / "a"), 8)
    VerifierScorer(kit, None, 8, sha(files / "a_heldout.npz"))
    VerifierScorer(kit, None, 8, None)  # an index that records no model: nothing to compare
    with pytest.raises(ValueError, match="another model"):
        VerifierScorer(kit, load_embedder(files / "b"), 8)
