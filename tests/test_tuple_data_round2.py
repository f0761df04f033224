"""Tuple data read where a labelled dataset is needed (refused, not the digits in its
place), tuple warnings naming CSV lines, tuple CSV headers, and m_per_class classes
smaller than m."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.schema import DataConfig
from dmlkit.data import data_config, load_dataset
from dmlkit.data.tuples import TupleDataset, read_tuples_csv
from dmlkit.samplers.m_per_class import MPerClassSampler
from dmlkit.training.weak import _warn_repeated

TRIPLETS = "anchor,positive,negative\n"
PAIRS = "item_a,item_b,similar\n"


def _messages(tuples, name: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_repeated(tuples, name)
    return [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def tuple_run(tmp_path_factory):
    """A run trained (1 epoch, mlp) from 60 triplets over x64.npy (60, 64)."""
    root = tmp_path_factory.mktemp("tuple_run")
    rng = np.random.default_rng(0)
    np.save(root / "x64.npy", rng.normal(size=(60, 64)).astype(np.float32))
    (root / "t.csv").write_text(TRIPLETS + "".join(
        f"{i},{(i + 1) % 60},{(i + 30) % 60}\n" for i in range(60)))
    cfg = {"name": "w", "data": {"kind": "triplets", "tuples": str(root / "t.csv"),
                                 "features": str(root / "x64.npy")},
           "model": {"name": "mlp", "dim": 4, "hidden": [8]}, "loss": "triplet_margin",
           "training": {"epochs": 1, "num_threads": 1, "batch_size": 16}}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(root / "c.yaml"), "--out",
                                      str(root / "run")])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("which", ["c.yaml", "run/config.yaml"])
def test_evaluate_and_embed_refuse_a_tuple_config(tuple_run, which):
    spec = str(tuple_run / which)
    runner = CliRunner()
    evaluated = runner.invoke(app, ["evaluate", str(tuple_run / "run"), "--data", spec])
    assert evaluated.exit_code != 0
    out = " ".join(evaluated.output.split())
    assert "describes tuple data (data.kind: triplets" in out, out
    assert "no labelled dataset to evaluate or embed" in out
    assert "x64.npy" in out and "--data" in out
    embedded = runner.invoke(app, ["embed", str(tuple_run / "run"), "--data", spec,
                                   "--out", str(tuple_run / "e.npz")])
    assert embedded.exit_code != 0 and "describes tuple data" in " ".join(
        embedded.output.split())
    assert not (tuple_run / "e.npz").exists()  # (not 1797 digits embedded)


def test_tuple_data_blocks_are_refused_and_drawn_tuples_keep_their_labels(tmp_path):
    with pytest.raises(ValueError, match=r"tuple data \(data\.kind: pairs.*dmlkit verify "
                                         r"RUN_DIR --data f\.npy --pairs p\.csv"):
        data_config({"kind": "pairs", "tuples": "p.csv", "features": "f.npy"})
    with pytest.raises(ValueError, match=r"no labelled dataset"):
        load_dataset(DataConfig(kind="triplets", tuples="t.csv"))
    # tuples drawn from labels have a labelled dataset: read as before
    assert len(load_dataset("configs/weak_triplets_digits.yaml")) == 1797
    assert len(load_dataset("configs/weak_pairs_digits.yaml")) == 1797


def test_impossible_triplets_warn_naming_their_lines(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "t.csv").write_text(TRIPLETS + "0,1,0\n0,0,2\n3,4,5\n3,5,4\n3,4,5\n1,2,3\n")
    text = " | ".join(_messages(read_tuples_csv(tmp_path / "t.csv", "triplets",
                                                tmp_path / "x.npy"), "t.csv"))
    assert "2 tuples name one item twice" in text and "lines 2, 3" in text, text
    assert "line 6 repeats line 4" in text, text
    assert "1 triplets are contradicted" in text and "(lines 4, 5)" in text, text


def test_impossible_pairs_are_worded_as_pairs_with_their_lines(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "p.csv").write_text(PAIRS + "0,0,0\n1,2,1\n2,1,0\n1,2,1\n")
    messages = _messages(read_tuples_csv(tmp_path / "p.csv", "pairs", tmp_path / "x.npy"),
                         "p.csv")
    text = " | ".join(messages)
    selfish = [m for m in messages if "with itself" in m]
    assert len(selfish) == 1 and "1 pairs pair an item with itself" in selfish[0], text
    assert "line 2" in selfish[0] and "anchor" not in selfish[0]
    assert "line 5 repeats line 3" in text, text
    assert "listed both as similar and as dissimilar (lines 3, 4)" in text, text


def test_tuples_without_a_file_are_named_by_position():
    ds = TupleDataset([[0, 1, 2], [3, 4, 4], [0, 1, 2]], np.zeros((5, 2), np.float32))
    text = " | ".join(_messages(ds, "tuples"))
    assert "tuple 2 repeats tuple 0" in text and "one item twice" in text
    assert "tuple 1;" in text, text
    assert ds.subset([1, 2]).lines is None


def test_subsets_keep_the_csv_lines(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "t.csv").write_text(TRIPLETS + "0,1,2\n3,4,5\n5,6,7\n")
    ds = read_tuples_csv(tmp_path / "t.csv", "triplets", tmp_path / "x.npy")
    assert ds.lines.tolist() == [2, 3, 4] and ds.subset([2, 0]).lines.tolist() == [4, 2]


def test_header_names_are_stripped(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "t.csv").write_text("anchor, positive, negative\n0,1,2\n")
    assert read_tuples_csv(tmp_path / "t.csv", "triplets",
                           tmp_path / "x.npy").tuples.tolist() == [[0, 1, 2]]
    (tmp_path / "p.csv").write_text(" item_a ,item_b, similar\n0,1,1\n2,3,0\n")
    assert read_tuples_csv(tmp_path / "p.csv", "pairs",
                           tmp_path / "x.npy").similar.tolist() == [True, False]


@pytest.mark.parametrize("kind,first,header", [
    ("triplets", "0,1,2", "anchor,positive,negative"),
    ("pairs", "0,1,1", "item_a,item_b,similar"),
])
def test_a_file_without_a_header_says_so(tmp_path, kind, first, header):
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "t.csv").write_text(f"{first}\n3,4,0\n")
    with pytest.raises(ValueError) as err:
        read_tuples_csv(tmp_path / "t.csv", kind, tmp_path / "x.npy")
    message = str(err.value)
    assert f"first row ({first}) was read as the header" in message, message
    assert f"header line {header}" in message


def test_m_per_class_warns_once_about_classes_smaller_than_m():
    labels = [0] * 6 + [1] * 6 + [2] * 2 + [3]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = MPerClassSampler(labels, m=4, batch_size=8, seed=0)
        batches = [list(sampler) for _ in range(2)]
    small = [str(w.message) for w in caught if "fewer than 4 items" in str(w.message)]
    assert len(small) == 1, [str(w.message) for w in caught]
    assert "2 of 4 classes" in small[0] and "class 3, 1 item" in small[0]
    assert "with replacement" in small[0] and "no positive pair" in small[0]
    assert batches[0] == batches[1]  # (sampling unchanged: reproducible)


def test_m_per_class_is_silent_when_every_class_has_m_items():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MPerClassSampler([0] * 4 + [1] * 5, m=4, batch_size=8)
