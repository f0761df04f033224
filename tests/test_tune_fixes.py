"""crossval / tune: the held-out part is never read, one folder of best files per study,
patience in best.yaml, storage passwords, and the space checks made before any trial."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.config import Config
from dmlkit.data.class_folds import class_folds
from dmlkit.data.digits import load_digits
from dmlkit.data.load import split_dataset, training_dataset
from dmlkit.training import cross_validation as cv
from dmlkit.training.cross_validation import cross_validate
from dmlkit.tuning.batches import check_batches, range_values
from dmlkit.tuning.space import check_space

RUN = """
model: {name: small_cnn, image_size: 8, dim: 8, width: 4}
loss: {name: multi_similarity}
sampler: {name: m_per_class, m: 4, batch_size: 8}
training: {epochs: 1, seed: 0, num_threads: 1, progress: false}
"""


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def _idx_dir(root: Path) -> Path:
    digits = load_digits()
    x = (digits.x[:, 0].numpy() * 255).round().astype(np.uint8)  # (n, 8, 8)
    y = digits.labels.numpy().astype(np.uint8)
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte.gz", x[:900])
    _write_idx(root / "train-labels-idx1-ubyte.gz", y[:900])
    _write_idx(root / "t10k-images-idx3-ubyte.gz", x[900:])
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", y[900:])
    return root


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"k{c}").mkdir(parents=True)
        for i in range(10):
            grey = (rng.random((8, 8)) * 255).astype(np.uint8)
            Image.fromarray(grey, "L").save(root / f"k{c}" / f"{i}.png")
    colour = (rng.random((8, 8, 3)) * 255).astype(np.uint8)  # a test class in colour
    Image.fromarray(colour, "RGB").save(root / "k5" / "c.png")
    return root


def _results(config: Config) -> dict:
    out = cross_validate(config, 2).to_dict()
    out.pop("seconds")
    return out


def _old_results(config: Config, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The folds as they were made before: from build_splits (which reads every part)."""
    from dmlkit.training.run import build_splits

    with monkeypatch.context() as m:
        m.setattr(cv, "training_part", lambda c: build_splits(c, for_training=True)[0])
        return _results(config)


def _same(a, b) -> None:
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert a.class_names == b.class_names and a.paths == b.paths


@pytest.mark.parametrize("data", [
    "{name: digits, split: classes, train_classes: [0, 1, 2, 3, 4], max_per_class: 30, seed: 3}",
    "{name: digits, split: stratified, test_fraction: 0.3, max_per_class: 20, seed: 1}",
    "{name: idx, path: IDX, part: train, heldout_part: test, max_per_class: 15, seed: 2}",
    "{name: idx, path: IDX, part: train, heldout_part: test, split: classes, "
    "train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7, 8, 9], max_per_class: 12}",
    "{name: image_folder, path: IMG, split: classes, train_classes: [k0, k1, k2, k3], "
    "test_classes: [k4, k5], max_per_class: 7, seed: 4}",
])  # fmt: skip
def test_training_dataset_is_the_training_side_of_split_dataset(tmp_path, data) -> None:
    data = data.replace("IDX", str(_idx_dir(tmp_path / "idx"))).replace(
        "IMG", str(_image_folder(tmp_path / "img")))
    cfg = Config.from_yaml(f"name: t\ndata: {data}\n" + RUN).data
    _same(training_dataset(cfg), split_dataset(cfg)[0])


def test_crossval_and_tune_never_read_a_corrupt_idx_test_part(tmp_path, monkeypatch) -> None:
    root = _idx_dir(tmp_path / "idx")
    config = Config.from_yaml(
        f"name: t\ndata: {{name: idx, path: {root}, part: train, heldout_part: test, "
        "split: classes, train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7, 8, 9], "
        "max_per_class: 12}\n" + RUN + "tune: {folds: 2, space: {optimizer.lr: "
        "{low: 1.0e-4, high: 1.0e-2, log: true}}}\n")
    readable = _results(config)
    images = root / "t10k-images-idx3-ubyte.gz"
    good = images.read_bytes()
    images.write_bytes(b"garbage" * 50)
    with pytest.raises(ValueError):
        split_dataset(config.data)  # dmlkit train needs the test part ...
    assert _results(config) == readable  # ... crossval does not read it
    from dmlkit.tuning.study import _check_folds

    _check_folds(config)  # nor does tune before its first trial
    images.unlink()
    assert _results(config) == readable
    images.write_bytes(good)
    assert readable == _old_results(config, monkeypatch)  # bit-identical to before


def test_crossval_never_decodes_an_image_of_a_test_class(tmp_path, monkeypatch) -> None:
    root = _image_folder(tmp_path / "img")
    config = Config.from_yaml(
        f"name: t\ndata: {{name: image_folder, path: {root}, split: classes, "
        "train_classes: [k0, k1, k2, k3], test_classes: [k4, k5]}\n" + RUN)
    readable = _results(config)
    (root / "k5" / "broken.png").write_bytes(b"not an image")
    (root / "k4" / "0.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="cannot read image"):
        split_dataset(config.data)
    assert _results(config) == readable
    (root / "k5" / "broken.png").unlink()
    (root / "k4" / "0.png").unlink()
    (root / "k4" / "1.png").rename(root / "k4" / "0.png")  # readable again
    assert readable == _old_results(config, monkeypatch)  # colour test class: RGB as before


@pytest.mark.parametrize("n", [1, 3])
def test_too_few_classes_for_folds_says_how_many_are_needed(n: int) -> None:
    with pytest.raises(ValueError, match="need at least 4 training classes") as err:
        class_folds(list(range(n)), 2)
    assert "at most" not in str(err.value)
    cfg = Config.from_yaml("name: t\ndata: {name: digits, split: classes, train_classes: "
                           f"{list(range(n))}}}\n" + RUN)
    with pytest.raises(ValueError, match=f"need at least 4 training classes.*has {n}"):
        cross_validate(cfg)


BASE = """
name: tiny
data: {name: digits, split: classes, train_classes: [0, 1, 2, 3, 4], test_classes: [5, 6],
       max_per_class: 16}
model: {name: small_cnn, in_channels: 1, image_size: 8, dim: 8, width: 4}
loss: {name: multi_similarity}
sampler: {name: m_per_class, m: 4, batch_size: 8}
training: {epochs: 1, seed: 0, num_threads: 1, progress: false}
"""


def _space(space: str, tune: str = "") -> Config:
    return Config.from_yaml(BASE + f"tune:\n  folds: 2\n{tune}  space:\n" + "".join(
        f"    {line}\n" for line in space.strip().splitlines()))


@pytest.mark.parametrize("space, words", [
    ("loss: {choices: [triplet_margin, multi_similarity]}\n"
     "loss.margin: {low: 0.1, high: 0.3, when: {loss.name: triplet-margin}}",
     "{loss.name: 'triplet-margin'} can never hold: 'loss.name' is one of "
     "['triplet_margin', 'multi_similarity']"),
    ("loss: {choices: [triplet_margin, multi_similarity]}\n"
     "miner: {choices: [null, batch_hard], when: {loss.name: [triplet_margin, contrastve]}}",
     "lists 'contrastve', which can never be"),
    ("loss.margin: {low: 0.1, high: 0.3, when: {loss.name: triplet_margin}}",
     "'loss.name' is 'multi_similarity' (fixed in the config, not searched"),
    ("optimizer.lr: {low: 1.0e-4, high: 1.0e-2, when: {model.dim: 16}}", "'model.dim' is 8"),
])  # fmt: skip
def test_a_when_value_that_can_never_occur_is_refused(space: str, words: str) -> None:
    with pytest.raises(ValueError, match="when") as err:
        check_space(_space(space))
    assert words in str(err.value)


def test_reachable_when_values_pass() -> None:
    check_space(_space(  # a whole-component choice sets miner.name; dim searched before
        "miner: {choices: [null, batch_hard]}\n"
        "model.dim: {choices: [8, 16]}\n"
        "optimizer.lr: {low: 1.0e-4, high: 1.0e-2, when: {miner.name: batch_hard, "
        "model.dim: 16}}\n"
        "loss: {choices: [{name: triplet_margin, margin: 0.2}, multi_similarity]}\n"
        "training.epochs: {choices: [1, 2], when: {loss.margin: 0.2}}"))


def test_a_mapping_choice_on_a_name_path_says_where_mappings_go() -> None:
    with pytest.raises(ValueError, match="'loss.name' takes names only") as err:
        _space("loss.name: {choices: [triplet_margin, {name: contrastive, pos_margin: 0.0}]}")
    assert "loss: {choices: [name, {name: ..., key: value}]}" in str(err.value)
    assert "unhashable" not in str(err.value)


def test_patience_is_searched_only_for_the_best_epoch_objective() -> None:
    with pytest.raises(ValueError, match="training.patience, but tune.objective is 'final'"):
        check_space(_space("training.patience: {choices: [1, 2]}"))
    check_space(_space("training.patience: {choices: [1, 2]}", "  objective: best_epoch\n"))


def _fold_labels(config: Config) -> list[torch.Tensor]:
    train = training_dataset(config.data)
    return [train.labels[torch.isin(train.labels, torch.tensor(t))]
            for t, _ in class_folds(train.classes, 2)]  # folds train on 2 and 3 classes


@pytest.mark.parametrize("space, words", [
    ("sampler.m: {choices: [2, 4]}\nsampler.batch_size: {choices: [8, 16]}",
     "sampler.m=2, sampler.batch_size=8 make sampler {'name': 'm_per_class', 'm': 2, "
     "'batch_size': 8}, which a fold training on 2 classes"),
    ("sampler.m: {choices: [4, 3]}", "sampler.m=3 make"),
    ("sampler.batch_size: {low: 8, high: 24, step: 4}", "sampler.batch_size=12 make"),
    ("sampler: {choices: [{name: m_per_class, m: 4, batch_size: 8}, "
     "{name: m_per_class, m: 2, batch_size: 6}]}", "classes per batch"),
    ("sampler.m: {choices: [4, 2], when: {loss.name: multi_similarity}}", "sampler.m=2 make"),
])  # fmt: skip
def test_sampler_settings_a_fold_cannot_batch_are_refused(space: str, words: str) -> None:
    config = _space(space)
    with pytest.raises(ValueError, match="cannot batch") as err:
        check_space(config, _fold_labels(config))
    assert words in str(err.value)


def test_sound_sampler_settings_pass_and_ranges_are_enumerated() -> None:
    config = _space(
        "sampler: {choices: [{name: m_per_class, m: 4, batch_size: 8}, "
        "{name: m_per_class, m: 8, batch_size: 16}]}\n"
        "sampler.num_batches: {low: 1, high: 4}")
    check_batches(config, _fold_labels(config))
    assert range_values({"low": 8, "high": 30, "step": 8}) == [8, 16, 24]
    assert range_values({"low": 1, "high": 1000}) == [1, 2, 999, 1000]  # extremes only
    assert range_values({"low": 0.1, "high": 0.5}) == [0.1, 0.5]


needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                  reason="dmlkit tune needs optuna")


def _tune(config: Config, out: Path, **kwargs):
    from dmlkit.tuning import tune

    return tune(config, 1, out, log=lambda _m: None, **kwargs)


@needs_optuna
def test_a_sampler_no_fold_can_batch_fails_before_anything_is_made(tmp_path) -> None:
    config = _space("sampler.m: {choices: [4, 2]}\nsampler.batch_size: {choices: [8, 16]}")
    with pytest.raises(ValueError, match="sampler.m=4, sampler.batch_size=16 make"):
        _tune(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_optuna
def test_each_study_has_its_own_folder_and_never_overwrites_another(tmp_path,
                                                                     monkeypatch) -> None:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app
    from dmlkit.tuning.study import default_out_dir

    config = _space("optimizer.lr: {choices: [0.001, 0.01]}")
    assert default_out_dir(config) == Path("runs/tiny-tune")  # the documented path
    assert default_out_dir(config, "tiny") == Path("runs/tiny-tune")
    assert default_out_dir(config, "b") == Path("runs/b-tune")
    config.tune.study_name = "s"
    assert default_out_dir(config) == default_out_dir(config, "s") == Path("runs/tiny-tune")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE + "tune: {folds: 2, space: {optimizer.lr: {choices: [0.001, 0.01]}}}\n")
    first = CliRunner().invoke(app, ["tune", str(path), "--trials", "1"])
    assert first.exit_code == 0, first.output
    best = (tmp_path / "runs/tiny-tune/best.json").read_text()
    second = CliRunner().invoke(app, ["tune", str(path), "--trials", "1", "--study", "b"])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "runs/b-tune/best.json").read_text())["study"] == "b"
    assert (tmp_path / "runs/tiny-tune/best.json").read_text() == best
    clash = CliRunner().invoke(app, ["tune", str(path), "--trials", "1", "--study", "c",
                                     "--out", "runs/tiny-tune"])
    assert clash.exit_code == 1 and "holds the best config of study 'tiny'" in clash.output
    assert (tmp_path / "runs/tiny-tune/best.json").read_text() == best


def test_write_best_refuses_another_studys_folder(tmp_path) -> None:
    from dmlkit.tuning.best import check_best_owner

    (tmp_path / "best.json").write_text(json.dumps({"study": "a", "storage": "sqlite:///x"}))
    check_best_owner(tmp_path, "a", "sqlite:///x")
    with pytest.raises(FileExistsError, match="study 'a'.*not of study 'b'"):
        check_best_owner(tmp_path, "b", "sqlite:///x")
    with pytest.raises(FileExistsError, match="own --out"):
        check_best_owner(tmp_path, "a", "postgresql://u:p@host/db")


@needs_optuna
@pytest.mark.parametrize("objective", ["best_epoch", "final"])
def test_best_yaml_leaves_out_a_patience_train_cannot_use(tmp_path, objective) -> None:
    from dmlkit.training.checks import check_patience

    space = ("training.patience: {choices: [1]}" if objective == "best_epoch"
             else "optimizer.lr: {choices: [0.001]}")
    text = BASE.replace("epochs: 1,", "epochs: 2, patience: 1,") + (
        f"tune:\n  folds: 2\n  objective: {objective}\n  space:\n    {space}\n")
    summary = _tune(Config.from_yaml(text), tmp_path / "out")
    path = tmp_path / "out" / "best.yaml"
    best = Config.from_yaml(path)
    assert best.training.patience is None
    check_patience(best)  # dmlkit train accepts it
    header = path.read_text().split("\nname:")[0]
    assert "training.patience 1 is left out" in header
    if objective == "best_epoch":  # the header's re-score command gives the score again
        assert "dmlkit crossval best.yaml --set training.patience=1" in header
        best.training.patience = 1
    else:
        assert "--set" not in header
    again = cross_validate(best, 2, seed=best.tune.seed, objective=objective)
    assert again.score == summary.best_value


@needs_optuna
@pytest.mark.parametrize("url", ["foo://bob:s3cret@host/db", "notaurl:bob:s3cret@x"])
def test_a_storage_that_cannot_open_shows_no_password_and_leaves_no_folder(tmp_path,
                                                                            url) -> None:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app
    from dmlkit.tuning.study import redact

    path = tmp_path / "tiny.yaml"
    path.write_text(BASE + "tune: {folds: 2, space: {optimizer.lr: {choices: [0.001, 0.01]}}}\n")
    out = tmp_path / "new" / "out"
    result = CliRunner().invoke(app, ["tune", str(path), "--trials", "1", "--storage", url,
                                      "--out", str(out)])
    assert result.exit_code == 1 and "cannot open the study storage" in result.output
    assert "s3cret" not in result.output
    assert not (tmp_path / "new").exists()
    assert redact("at postgresql://u:pw@h/db: failed") == "at postgresql://u:***@h/db: failed"


def test_best_yaml_keeps_no_storage_credentials(tmp_path):
    """best.yaml is a file to share and train from: the study storage it records carries
    no user or password (best.json already shows the storage without them)."""
    from types import SimpleNamespace

    from dmlkit.tuning.best import write_best

    cfg = Config.from_dict({
        "name": "t", "data": {"name": "digits"}, "model": {"name": "mlp"},
        "loss": {"name": "triplet_margin"},
        "tune": {"storage": "postgresql://bob:s3cret@db.example/optuna",
                 "space": {"optimizer.lr": {"low": 1e-4, "high": 1e-2, "log": True}}},
    })
    trial = SimpleNamespace(state=SimpleNamespace(name="COMPLETE"), value=0.5, number=0,
                            params={}, user_attrs={"config": cfg.to_dict()})
    study = SimpleNamespace(study_name="t", get_trials=lambda deepcopy=False: [trial])
    path = write_best(study, cfg, tmp_path, cfg.tune.storage)
    text = path.read_text() + (tmp_path / "best.json").read_text()
    assert "s3cret" not in text and "bob" not in text
    assert "postgresql://db.example/optuna" in path.read_text()


@pytest.mark.parametrize("space, words", [
    ("training.epochs: {low: 1, high: 2}\n"
     "optimizer.lr: {low: 1.0e-3, high: 1.0e-2, when: {training.epochs: 5}}",
     "whole numbers in [1, 2]"),
    ("training.epochs: {low: 1, high: 3}\n"
     "optimizer.lr: {low: 1.0e-3, high: 1.0e-2, when: {training.epochs: [2, 2.5]}}",
     "can never hold 2.5"),
    ("optimizer.weight_decay: {low: 0.0, high: 0.1}\n"
     "optimizer.lr: {low: 1.0e-3, high: 1.0e-2, when: {optimizer.weight_decay: high}}",
     "can never hold 'high'"),
])  # fmt: skip
def test_a_when_value_outside_a_searched_range_is_refused(space: str, words: str) -> None:
    with pytest.raises(ValueError, match="when") as err:
        check_space(_space(space))
    assert words in str(err.value)


def test_when_values_inside_a_searched_range_pass() -> None:
    check_space(_space("training.epochs: {low: 1, high: 3}\n"
                       "optimizer.lr: {low: 1.0e-3, high: 1.0e-2, when: {training.epochs: 2}}"))
    check_space(_space(  # a conditional range may also keep the config's value (1)
        "loss: {choices: [triplet_margin, multi_similarity]}\n"
        "training.epochs: {low: 2, high: 3, when: {loss.name: triplet_margin}}\n"
        "optimizer.lr: {low: 1.0e-3, high: 1.0e-2, when: {training.epochs: 1}}"))


@pytest.mark.parametrize("log", ["'false'", "'no'", "1", "0"])
def test_log_must_be_a_boolean(log: str) -> None:
    with pytest.raises(TypeError, match=r"\.log must be true or false"):
        _space(f"optimizer.lr: {{low: 1.0e-4, high: 1.0e-2, log: {log}}}")
