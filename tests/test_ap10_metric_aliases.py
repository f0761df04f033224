"""The application kits take the distance names and aliases of `dmlkit evaluate` and the
command line (l2 = euclidean, ip = dot, any case), with the same results as the names."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.apps import FewShotClassifier, Identifier, Verifier


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 10)
    x = (rng.normal(size=(60, 5)) + 3.0 * np.eye(6, 5)[y]).astype(np.float32)
    return x, y


@pytest.mark.parametrize(("alias", "name"), [("l2", "euclidean"), ("IP", "dot"),
                                             ("Euclidean", "euclidean"), ("COSINE", "cosine")])
def test_aliases_give_the_named_metric(data, alias, name):
    x, y = data
    a, b = Verifier(metric=alias).fit(x, y), Verifier(metric=name).fit(x, y)
    np.testing.assert_allclose(a.score_pairs(x[:9], x[9:18]), b.score_pairs(x[:9], x[9:18]))
    assert a.threshold_ == pytest.approx(b.threshold_)
    a, b = Identifier(metric=alias).fit(x, y), Identifier(metric=name).fit(x, y)
    assert (a.predict(x) == b.predict(x)).all()
    a = FewShotClassifier(metric=alias).fit(x[::2], y[::2])
    b = FewShotClassifier(metric=name).fit(x[::2], y[::2])
    assert (a.predict(x[1::2]) == b.predict(x[1::2])).all()
    ea = a.evaluate_episodes(x, y, n_way=3, k_shot=1, n_query=3, episodes=5,
                             seed=0)
    eb = b.evaluate_episodes(x, y, n_way=3, k_shot=1, n_query=3, episodes=5,
                             seed=0)
    assert ea["accuracy"] == eb["accuracy"] and ea["metric"] == name
    assert Verifier(metric=alias).get_params()["metric"] == alias  # (kept as given)


@pytest.mark.parametrize("make", [Verifier, Identifier, FewShotClassifier])
def test_an_unknown_metric_is_still_refused(data, make):
    x, y = data
    with pytest.raises(ValueError, match="metric must be"):
        make(metric="manhattan").fit(x, y)
