"""A saved metric's files: strict JSON for infinite parameters, and the shape fields of
``metric.json`` checked against ``components.npy``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmlkit.classical import LFDA, ITMLSupervised
from dmlkit.classical.frozen import load_metric, save_metric


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 10)
    return rng.normal(size=(30, 4)) + 2.0 * y[:, None], y


def test_infinite_itml_gamma_is_written_as_strict_json(tmp_path):
    x, y = _data()
    learner = ITMLSupervised(gamma=float("inf"), max_iter=20, random_state=0).fit(x, y)
    save_metric(learner, tmp_path)
    meta = _strict((tmp_path / "metric.json").read_text())
    assert meta["params"]["gamma"] == "inf" and float(meta["params"]["gamma"]) == np.inf
    L, loaded = load_metric(tmp_path)
    assert L.shape == (4, 4) and loaded["params"]["gamma"] == "inf"


@pytest.mark.parametrize("key, value", [("n_components", 3), ("n_features_in", 7)])
def test_metric_json_shapes_must_match_components(tmp_path, key, value):
    x, y = _data()
    save_metric(LFDA(device="cpu").fit(x, y), tmp_path)
    meta = json.loads((tmp_path / "metric.json").read_text())
    assert load_metric(tmp_path)[0].shape == (meta["n_components"], meta["n_features_in"])
    meta[key] = value
    (tmp_path / "metric.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"says {key} {value} but .*components\.npy is 4 x 4"):
        load_metric(tmp_path)
