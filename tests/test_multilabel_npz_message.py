"""An .npz of (n, C) bool multi-labels given to a run's data section says where such
labels are trained and evaluated instead."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.data.npz import load_npz


def test_bool_multi_labels_in_a_runs_npz_point_to_the_trainer_and_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ml.npz", x=rng.normal(size=(20, 4)).astype(np.float32),
             labels=rng.random((20, 3)) < 0.5)
    with pytest.raises(ValueError) as info:
        load_npz(tmp_path / "ml.npz")
    text = str(info.value)
    assert "must hold integer labels, got bool" in text
    assert "dmlkit.training.Trainer" in text and "dmlkit evaluate" in text
