"""A verifier kit that records no model fingerprint is served with one warning (its
threshold cannot be checked against the served model); kit messages use the right article."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 8)).astype(np.float32), np.repeat(np.arange(6), 10)


def saved_verifier(path, embeddings, model_sha256=None):
    from dmlkit.apps import Verifier

    x, y = embeddings
    Verifier(n_bootstrap=5).fit(x, y).save(path, model_sha256=model_sha256)
    return Verifier.load(path)


def test_a_verifier_without_fingerprint_is_served_with_one_warning(embeddings, tmp_path):
    from dmlkit.service.provenance import VerifierScorer

    kit = saved_verifier(tmp_path / "kit", embeddings)  # as from a numpy re-save
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VerifierScorer(kit, None, 8, "ab" * 32)
    lines = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(lines) == 1, lines
    assert "records no model fingerprint" in lines[0] and "threshold" in lines[0]
    assert "\n" not in lines[0]


def test_a_verifier_with_a_matching_fingerprint_is_served_without_warning(embeddings,
                                                                        tmp_path):
    from dmlkit.service.provenance import VerifierScorer

    kit = saved_verifier(tmp_path / "kit", embeddings, model_sha256="ab" * 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VerifierScorer(kit, None, 8, "ab" * 32)
    with pytest.raises(ValueError, match="another model"):  # and one that differs is refused
        VerifierScorer(kit, None, 8, "cd" * 32)


def test_kit_messages_use_an_before_a_vowel(embeddings, tmp_path):
    from dmlkit.apps import Identifier, Verifier
    from dmlkit.index import IndexFormatError

    x, y = embeddings
    Identifier().fit(x, y).save(tmp_path / "id_kit")
    with pytest.raises(IndexFormatError, match="holds an Identifier, not a Verifier"):
        Verifier.load(tmp_path / "id_kit")
    Verifier(n_bootstrap=5).fit(x, y).save(tmp_path / "v_kit")
    with pytest.raises(FileExistsError, match="holds a saved Verifier, not an Identifier"):
        Identifier().fit(x, y).save(tmp_path / "v_kit")
