"""Cold-start items placed at the known items' length, and reversed / flipped array views
given to the application kits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dmlkit.apps import CMLRecommender, FewShotClassifier, Identifier, MetricOutlierDetector


def test_a_cold_item_tops_only_the_lists_of_users_of_its_kind():
    rng = np.random.default_rng(0)
    n_items, n_users, kinds = 50, 200, 5
    kind, user_kind = np.arange(n_items) % kinds, np.arange(n_users) % kinds
    users = np.repeat(np.arange(n_users), 6)
    items = np.concatenate([rng.choice(np.flatnonzero(kind == user_kind[u]), 6, replace=False)
                            for u in range(n_users)])
    features = (np.eye(kinds)[kind] + 0.05 * rng.normal(size=(n_items, kinds))).astype(np.float32)
    rec = CMLRecommender(random_state=0).fit(users, items, item_features=features)
    rec.add_items([1000], np.eye(kinds, dtype=np.float32)[[2]])
    top = rec.recommend(np.arange(n_users), k=1)[:, 0]
    assert (top[user_kind == 2] == 1000).mean() >= 0.8
    assert (top[user_kind != 2] == 1000).mean() <= 0.05
    lengths = rec.item_embeddings_.norm(dim=1)
    assert float(lengths[-1]) == pytest.approx(float(lengths[:-1].median()), rel=1e-5)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32)[:300] / 16, y[:300]


def test_kits_take_reversed_and_flipped_views(digits):
    x, y = digits
    clf = FewShotClassifier().fit(x[::-1], y[::-1])
    assert np.array_equal(clf.predict(x[::-1]), clf.predict(x.copy())[::-1])
    MetricOutlierDetector().fit(np.flip(x, 0)).score_samples(x[:, ::-1])
    Identifier().fit(x[:, ::-1], y).predict(x[:10, ::-1])
