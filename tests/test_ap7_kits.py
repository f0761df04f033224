"""Application kits: parameter and input checks, DataFrame columns, numpy parameters saved,
a run's model loaded once and checked, text refused with the way to embed it."""

import shutil
from unittest import mock

import numpy as np
import pytest
import scipy.sparse
import torch
from test_kit_run_fingerprint import trained  # noqa: F401 (a fixture)

from dmlkit.apps import (
    CMLRecommender,
    FewShotClassifier,
    Identifier,
    MetricOutlierDetector,
    Verifier,
)
from dmlkit.apps.persistence import StaleKitError

RNG = np.random.default_rng(0)
CENTRES = RNG.normal(size=(4, 6)) * 3
X = CENTRES.repeat(10, 0) + 0.1 * RNG.normal(size=(40, 6))
Y = np.repeat(np.arange(4), 10)


# -- 1, 8: Identifier parameters ----------------------------------------------------------
@pytest.mark.parametrize("name,value", [("search_depth", 0), ("search_depth", -3),
                                        ("search_depth", 2.5), ("calibration_size", -1),
                                        ("calibration_size", 0)])
def test_identifier_refuses_bad_search_depth_and_calibration_size(name, value):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        Identifier(**{name: value}).fit(X, Y)


def test_identifier_evaluate_takes_one_far():
    ident = Identifier(target_far=0.1).fit(X[Y < 3], Y[Y < 3])
    out = ident.evaluate(X, Y, fars=0.1)
    assert "dir_at_far_0.1" in out


# -- 5: an identity equal to unknown_label ------------------------------------------------
def test_identifier_refuses_an_identity_equal_to_unknown_label():
    y = np.where(Y == 0, -1, Y)
    with pytest.raises(ValueError, match="identity -1 equals unknown_label"):
        Identifier(target_far=0.1).fit(X, y)
    ident = Identifier(target_far=0.1).fit(X[Y > 0], Y[Y > 0])
    with pytest.raises(ValueError, match="equals unknown_label"):
        ident.enroll(X[:2], [-1, -1])
    # another unknown_label, or string identities, are fine
    Identifier(target_far=0.1, unknown_label="nobody").fit(X, y)
    Identifier(target_far=0.1).fit(X, Y.astype(str))


# -- 8: Verifier / MetricOutlierDetector / CMLRecommender parameters ----------------------
def test_verifier_refuses_zero_bootstrap_at_fit():
    with pytest.raises(ValueError, match="n_bootstrap must be an integer >= 1"):
        Verifier(n_bootstrap=0).fit(X, Y)


@pytest.mark.parametrize("kit", [Verifier, Identifier, FewShotClassifier])
@pytest.mark.parametrize("batch_size", [0, -1, "8", 2.5])
def test_kits_refuse_a_bad_batch_size_at_fit(kit, batch_size):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        kit(batch_size=batch_size).fit(X, Y)


@pytest.mark.parametrize("params,name", [({"n_neighbors": 2.5}, "n_neighbors"),
                                         ({"n_neighbors": "5"}, "n_neighbors"),
                                         ({"n_prototypes": 2.7}, "n_prototypes"),
                                         ({"batch_size": 0}, "batch_size")])
def test_outlier_detector_refuses_non_integer_counts(params, name):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        MetricOutlierDetector(**params).fit(X)


def test_outlier_detector_refuses_a_learn_config_that_is_no_dict():
    with pytest.raises(ValueError, match="learn_config must be a dict"):
        MetricOutlierDetector(embedder="learn", learn_config=[1]).fit(X, Y)


@pytest.mark.parametrize("kit", [Verifier, Identifier, FewShotClassifier])
def test_only_the_outlier_detector_learns_a_metric(kit):
    with pytest.raises(ValueError, match="only MetricOutlierDetector learns a metric"):
        kit(embedder="learn").fit(X, Y)


def _interactions():
    users = np.repeat(np.arange(6), 3)
    items = np.array([0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 0, 4, 0, 1, 0, 2, 4])
    return users, items


def test_recommender_refuses_sparse_features_and_non_integer_k():
    users, items = _interactions()
    feats = scipy.sparse.csr_matrix(np.eye(5, dtype=np.float32))
    with pytest.raises(TypeError, match="sparse input is not supported"):
        CMLRecommender(epochs=1, dim=4).fit(users, items, feats)
    rec = CMLRecommender(epochs=1, dim=4).fit(users, items)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rec.recommend([0], k=2.5)


def test_recommender_refuses_features_beyond_float32():
    users, items = _interactions()
    feats = np.eye(5) * 1e39
    with pytest.raises(ValueError, match="beyond float32's range"):
        CMLRecommender(epochs=1, dim=4).fit(users, items, feats)


@pytest.mark.parametrize("kit", [Verifier, Identifier, FewShotClassifier, MetricOutlierDetector])
def test_kits_refuse_float64_inputs_beyond_float32(kit):
    with pytest.raises(ValueError, match="beyond float32's range"):
        kit().fit(X * 1e300, Y)


# -- 6: MetricOutlierDetector labels ------------------------------------------------------
def test_outlier_detector_checks_labels_as_the_other_kits():
    with pytest.raises(ValueError, match="continuous"):
        MetricOutlierDetector("prototype").fit(X, RNG.normal(size=len(X)))
    with pytest.raises(ValueError):
        MetricOutlierDetector("prototype").fit(X, [None] * len(X))
    with pytest.warns(Warning, match="column-vector"):
        det = MetricOutlierDetector("prototype").fit(X, Y[:, None])
    assert det.prototypes_.shape[0] == 4


# -- 7: text -----------------------------------------------------------------------------
@pytest.mark.parametrize("kit", [Verifier, Identifier, FewShotClassifier, MetricOutlierDetector])
def test_kits_refuse_text_with_the_way_to_embed_it(kit):
    sentences = ["a cat", "a dog", "a car", "a bus"] * 2
    with pytest.raises(TypeError, match="embed the sentences first.*embed_texts"):
        kit(embedder=lambda x: x).fit(sentences, [0, 0, 1, 1] * 2)
    with pytest.raises(TypeError, match="not text"):
        kit().fit(np.array(sentences, dtype=object)[:, None], [0, 0, 1, 1] * 2)


# -- 3: numpy parameters saved -----------------------------------------------------------
def test_kits_with_numpy_parameters_save_and_load(tmp_path):
    ident = Identifier(target_far=np.float64(0.1), unknown_label=np.int64(-1),
                       search_depth=np.int64(64)).fit(X, Y)
    ident.save(tmp_path / "ident")
    back = Identifier.load(tmp_path / "ident")
    assert type(back.unknown_label) is np.int64 and back.unknown_label == -1
    assert type(back.search_depth) is np.int64
    np.testing.assert_array_equal(back.predict(X), ident.predict(X))
    v = Verifier(fars=np.array([0.01, 0.1]), n_bootstrap=5).fit(X, Y)
    v.save(tmp_path / "v")
    fars = Verifier.load(tmp_path / "v").fars
    assert isinstance(fars, np.ndarray) and fars.dtype == np.float64
    np.testing.assert_array_equal(fars, [0.01, 0.1])
    few = FewShotClassifier(method="knn", n_neighbors=np.int64(3)).fit(X, Y)
    few.save(tmp_path / "f")
    assert FewShotClassifier.load(tmp_path / "f").get_params()["n_neighbors"] == 3


def test_an_unsavable_parameter_is_named_without_talking_of_runs(tmp_path):
    ident = Identifier(unknown_label=object()).fit(X, Y)
    with pytest.raises(TypeError) as err:
        ident.save(tmp_path / "ident")
    assert "unknown_label" in str(err.value) and "run directory" not in str(err.value)
    kit = FewShotClassifier(embedder=lambda x: x).fit(X, Y)
    with pytest.raises(TypeError, match="run directory"):
        kit.save(tmp_path / "f")


# -- 2: DataFrame columns ----------------------------------------------------------------
@pytest.mark.parametrize("kit", [FewShotClassifier, Identifier, MetricOutlierDetector])
def test_kits_check_dataframe_column_names(kit):
    pd = pytest.importorskip("pandas")
    cols = [f"f{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=cols)
    fitted = kit().fit(frame, Y)
    assert list(fitted.feature_names_in_) == cols
    fitted.predict(frame)  # same columns: fine
    with pytest.raises(ValueError, match="feature names"):
        fitted.predict(frame[cols[::-1]])


# -- 4: a run's model loaded once, and checked ------------------------------------------
@pytest.fixture(scope="module")
def run_data(trained):  # noqa: F811 (the imported fixture)
    """A tiny trained run (the fingerprint tests' own), its held-out inputs and labels."""
    root, x, y = trained
    return root / "run", x, y


def _perturb(run_dir):
    path = run_dir / "model.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, path)


@pytest.mark.parametrize("kit", [FewShotClassifier, Identifier, Verifier,
                                 MetricOutlierDetector])
def test_a_run_is_loaded_once_and_a_retrained_run_refused(run_data, tmp_path, kit):
    import dmlkit.runs

    source, x, y = run_data
    run = tmp_path / "run"
    shutil.copytree(source, run)
    params = {"n_bootstrap": 5} if kit is Verifier else {}
    fitted = kit(embedder=str(run), **params).fit(x, y)
    with mock.patch.object(dmlkit.runs, "load_run", side_effect=AssertionError("reloaded")):
        if kit is Verifier:
            fitted.predict(x[:3], x[3:6])
        else:
            fitted.predict(x[:3])
    import pickle

    again = pickle.loads(pickle.dumps(fitted))
    _perturb(run)
    with pytest.raises(StaleKitError, match="have changed since the kit was fitted"):
        fitted.predict(x[:3], x[3:6]) if kit is Verifier else fitted.predict(x[:3])
    with pytest.raises(StaleKitError):
        again.predict(x[:3], x[3:6]) if kit is Verifier else again.predict(x[:3])
    with pytest.raises(StaleKitError):
        fitted.save(tmp_path / "kit")
