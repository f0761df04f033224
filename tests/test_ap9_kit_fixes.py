"""Saved kits keep the column names they were fitted with; the recommender and the outlier
detector check their numeric settings (numpy numbers pass, non-integers and non-finite
weights do not); cold-start items placed at NaN are refused; no users, no lists."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dmlkit.apps import CMLRecommender, DeepSVDD, FewShotClassifier, MetricOutlierDetector

USERS, ITEMS = [1, 1, 1, 2, 2, 3], [10, 11, 12, 10, 13, 14]


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(30, 3)) * [1, 10, 100], columns=["a", "b", "c"])


@pytest.mark.parametrize("make", [MetricOutlierDetector, FewShotClassifier,
                                  lambda: DeepSVDD(epochs=1, batch_size=8)])
def test_a_loaded_kit_refuses_reordered_columns_as_the_fitted_one(frame, make, tmp_path):
    kit = make().fit(frame, np.arange(30) % 2)
    kit.save(tmp_path / "k")
    loaded = type(kit).load(tmp_path / "k")
    assert list(loaded.feature_names_in_) == ["a", "b", "c"]
    use = loaded.score_samples if hasattr(loaded, "score_samples") else loaded.predict
    with pytest.raises(ValueError, match="feature names"):
        use(frame[["c", "b", "a"]])
    fresh = kit.score_samples if hasattr(kit, "score_samples") else kit.predict
    np.testing.assert_allclose(use(frame), fresh(frame))


def test_a_kit_saved_without_feature_names_still_loads(frame, tmp_path):
    MetricOutlierDetector().fit(frame).save(tmp_path / "k")
    manifest_path = tmp_path / "k" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["feature_names_in"]  # as saved before the names were recorded
    manifest_path.write_text(json.dumps(manifest))
    loaded = MetricOutlierDetector.load(tmp_path / "k")
    assert not hasattr(loaded, "feature_names_in_")
    assert loaded.score_samples(frame.to_numpy()).shape == (30,)


def test_a_kit_fitted_on_an_array_records_no_feature_names(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    MetricOutlierDetector().fit(x).save(tmp_path / "k")
    assert "feature_names_in" not in json.loads((tmp_path / "k" / "manifest.json").read_text())


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0])
def test_cml_refuses_a_feature_weight_that_is_not_finite_and_non_negative(weight):
    with pytest.raises(ValueError, match="feature_weight must be"):
        CMLRecommender(dim=4, epochs=1, feature_weight=weight).fit(
            USERS, ITEMS, item_features=np.eye(5))


def test_cml_add_items_refuses_nan_placements_before_changing_anything():
    model = CMLRecommender(dim=4, epochs=2, batch_size=4).fit(USERS, ITEMS,
                                                              item_features=np.eye(5))
    with torch.no_grad():  # a feature network that learned NaN weights
        model.feature_net_[-1].bias.fill_(float("nan"))
    before = model.item_ids_.copy()
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.add_items([50], np.eye(5)[:1])
    np.testing.assert_array_equal(model.item_ids_, before)
    assert model.item_embeddings_.shape[0] == len(before)
    assert model.recommend([1], k=3).shape == (1, 3)


@pytest.mark.parametrize("params", [dict(dim=2.7), dict(n_negatives=1.9), dict(epochs=1.5),
                                    dict(epochs=True), dict(batch_size=0.5), dict(dim=0)])
def test_cml_refuses_integer_settings_that_are_not_integers(params):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        CMLRecommender(**{"epochs": 1, **params}).fit(USERS, ITEMS)


def test_cml_accepts_numpy_numbers():
    model = CMLRecommender(dim=np.int64(4), epochs=np.int32(1), margin=np.float32(0.5),
                           feature_weight=np.float32(0.5)).fit(USERS, ITEMS,
                                                               item_features=np.eye(5))
    assert model.user_embeddings_.shape == (3, 4)


@pytest.mark.parametrize("items", [ITEMS, [f"i{v}" for v in ITEMS]])
def test_cml_recommends_nothing_for_no_users(items):
    model = CMLRecommender(dim=4, epochs=1).fit(USERS, items)
    empty, one = model.recommend([], k=3), model.recommend([1], k=3)
    assert empty.shape == (0, 3) and empty.dtype == one.dtype


def test_outlier_detector_accepts_a_numpy_contamination():
    x = np.random.default_rng(0).normal(size=(30, 3))
    det = MetricOutlierDetector(contamination=np.float32(0.1)).fit(x)
    assert det.offset_ == pytest.approx(MetricOutlierDetector(contamination=0.1).fit(x).offset_)
    with pytest.raises(ValueError, match="contamination must be in"):
        MetricOutlierDetector(contamination=np.float32(0.6)).fit(x)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -1e-3, True])
def test_the_recommender_refuses_a_learning_rate_it_cannot_train_at(lr):
    from dmlkit.apps import CMLRecommender

    with pytest.raises(ValueError, match="lr must be a finite learning rate"):
        CMLRecommender(dim=4, epochs=1, lr=lr).fit([1, 1, 2], [10, 11, 10])


def test_a_saved_recommender_gives_its_tuple_settings_back_as_tuples(tmp_path):
    """get_params after a save and load equals get_params before (JSON has no tuples)."""
    model = CMLRecommender(dim=4, epochs=1, feature_hidden=(8, 4)).fit(
        USERS, ITEMS, item_features=np.eye(5))
    model.save(tmp_path / "kit")
    loaded = CMLRecommender.load(tmp_path / "kit")
    assert loaded.get_params() == model.get_params()
    assert loaded.feature_hidden == (8, 4)
    listed = CMLRecommender(dim=4, epochs=1, feature_hidden=[8]).fit(
        USERS, ITEMS, item_features=np.eye(5))
    listed.save(tmp_path / "kit2")
    assert CMLRecommender.load(tmp_path / "kit2").feature_hidden == [8]
