"""An Identifier keeps the false-alarm rate its threshold reached where it was calibrated
(``calibration_far_``), saves it, and ``dmlkit identify`` reports it beside target_far."""

from __future__ import annotations

import json

import numpy as np
from blob_helpers import labelled_blobs
from typer.testing import CliRunner

from dmlkit.apps import Identifier
from dmlkit.cli.main import app


def test_calibration_far_is_the_share_of_impostor_scores_admitted():
    x, y = labelled_blobs(n_classes=10, per_class=6, d=5, noise=0.6, spread=2.0)
    ident = Identifier(target_far=0.1).fit(x, y)
    # the impostor scores by hand: each item's best score against another identity
    z = ident.embed(x)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    scores = z @ z.T  # cosine, the kit's default metric
    other = y[:, None] != y[None, :]
    impostor = np.where(other, scores, -np.inf).max(axis=1)
    by_hand = float((impostor >= ident.threshold_).mean())
    assert abs(ident.calibration_far_ - by_hand) <= 1 / len(y) + 1e-9  # (one score at the
    # threshold may fall either side of it in another rounding)
    assert 0 < ident.calibration_far_ <= 0.1


def test_calibration_far_is_saved_and_none_for_a_closed_set(tmp_path):
    x, y = labelled_blobs(n_classes=8, per_class=5, d=5, noise=0.6, spread=2.0)
    ident = Identifier(target_far=0.2).fit(x, y)
    ident.save(tmp_path / "kit")
    assert Identifier.load(tmp_path / "kit").calibration_far_ == ident.calibration_far_
    assert Identifier(target_far=None).fit(x, y).calibration_far_ is None


def test_identify_reports_the_calibration_far(tmp_path):
    x, y = labelled_blobs(n_classes=12, per_class=6, d=5, noise=0.6, spread=2.0)
    np.savez(tmp_path / "g.npz", x=x[y < 9], labels=y[y < 9])
    np.savez(tmp_path / "q.npz", x=x[y >= 9], labels=y[y >= 9])
    res = CliRunner().invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"),
                                   "--query", str(tmp_path / "q.npz"), "--target-far", "0.1",
                                   "--out", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "i.json").read_text())
    assert out["target_far"] == 0.1 and 0 <= out["calibration_far"] <= 0.1
    assert "calibration_far is its false-alarm rate" in out["threshold_note"]
