"""`dmlkit embed`, `evaluate` and `index build` read --data as the run's inputs: the same
shape rule as `dmlkit search` (one function), folders read as the run read its training
images, named .npz arrays (--x-key / --labels-key), and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import SMALL_CNN, error_line, train_small
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small_cnn run on the 8x8 digits (its model takes (n, 1, H, W) of any H, W) and an
    index of its held-out items."""
    root = tmp_path_factory.mktemp("inputs")
    train_small(root, SMALL_CNN)
    res = runner.invoke(app, ["index", "build", str(root / "run"), "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    return root


def _digits(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    from dmlkit.data import load_digits

    data = load_digits()
    return data.x[:n].numpy(), data.labels[:n].numpy()  # (n, 1, 8, 8) in [0, 1]


def _expected(run_dir, x: np.ndarray) -> np.ndarray:
    from dmlkit.training import embed, load_run

    return embed(load_run(run_dir).model, torch.as_tensor(x, dtype=torch.float32))[0].numpy()


_error = error_line


def test_embed_refuses_another_input_size_with_the_message_of_search(small, tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.npz"
    np.savez(big, x=rng.random((6, 1, 16, 16)).astype(np.float32), labels=np.arange(6) % 2)
    embed = runner.invoke(app, ["embed", str(small / "run"), "--data", str(big),
                                "--out", str(tmp_path / "e.npz")])
    search = runner.invoke(app, ["search", str(small / "idx"), "-q", str(big)])
    assert embed.exit_code == 1 and search.exit_code == 1
    assert not (tmp_path / "e.npz").exists()
    message = _error(embed)
    assert message == _error(search)  # one check, one message
    assert "(1, 16, 16)" in message and "1x8x8" in message and str(big) in message
    for cmd in (["evaluate", str(small / "run"), "--data", str(big), "--out",
                 str(tmp_path / "ev.json")],
                ["index", "build", str(small / "run"), "--data", str(big), "--out",
                 str(tmp_path / "idx")]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 1 and _error(res) == message, cmd


def test_embed_takes_what_search_takes_flat_rows_reshaped(small, tmp_path):
    x, y = _digits()
    np.savez(tmp_path / "flat.npz", x=x.reshape(len(x), 64), labels=y)
    res = runner.invoke(app, ["embed", str(small / "run"), "--data", str(tmp_path / "flat.npz"),
                              "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    got = np.load(tmp_path / "e.npz")["embeddings"]
    np.testing.assert_allclose(got, _expected(small / "run", x), rtol=1e-5, atol=1e-6)


def _png_folder(root, side: int, n: int = 3):
    from PIL import Image

    rng = np.random.default_rng(side)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            pixels = (rng.random((side, side)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_an_image_folder_of_another_size_is_refused_like_query_images(small, tmp_path):
    folder = _png_folder(tmp_path / "imgs", 32)
    res = runner.invoke(app, ["embed", str(small / "run"), "--data", str(folder),
                              "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 1 and "(1, 32, 32)" in _error(res) and "1x8x8" in _error(res)
    query = runner.invoke(app, ["search", str(small / "idx"), "-q", str(folder / "a" / "0.png")])
    assert query.exit_code == 1 and "(1, 32, 32)" in _error(query)


def test_a_folder_is_read_at_the_image_size_the_run_was_trained_on(tmp_path):
    """A run trained on 12x12 images embeds a folder of 20x20 images as it reads query
    images: resized to 12x12, never passed on at 20x20."""
    from dmlkit.config import load_config
    from dmlkit.runs.queries import read_images
    from dmlkit.training import train_run

    train_dir = _png_folder(tmp_path / "train", 12, n=6)
    (tmp_path / "c.yaml").write_text(
        f"name: folder\ndata: {{name: image_folder, path: {train_dir}, image_size: 12, "
        "color: grayscale, test_fraction: 0.5}\nmodel: {name: small_cnn, dim: 4, width: 4}\n"
        "sampler: {name: m_per_class, m: 2, batch_size: 4}\ntraining: {epochs: 1}\n")
    train_run(load_config(tmp_path / "c.yaml"), tmp_path / "run", log=lambda *a: None)
    other = _png_folder(tmp_path / "other", 20)
    res = runner.invoke(app, ["embed", str(tmp_path / "run"), "--data", str(other),
                              "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    files = sorted(other.rglob("*.png"))
    want = _expected(tmp_path / "run", read_images(files, 12, "grayscale"))
    np.testing.assert_allclose(np.load(tmp_path / "e.npz")["embeddings"], want, atol=1e-5)


def test_input_fit_rule():
    from dmlkit.runs.queries import InputSpec, check_input_shape, input_fit

    spec = InputSpec((1, 8, 8), "float32", 0.0, 1.0)
    assert input_fit((1, 8, 8), spec) == (1, 8, 8)
    assert input_fit((64,), spec) == (1, 8, 8) and input_fit((8, 8), spec) == (1, 8, 8)
    assert input_fit((1, 16, 16), spec) is None
    resizing = InputSpec((1, 8, 8), "float32", 0.0, 1.0, any_size=True)
    assert input_fit((1, 16, 12), resizing) == (1, 16, 12)
    assert input_fit((3, 16, 16), resizing) is None  # other channels: still refused
    with pytest.raises(ValueError, match=r"q\.npy: inputs of shape \(3, 16, 16\)"):
        check_input_shape((3, 16, 16), resizing, "q.npy")
    assert InputSpec.from_info(resizing.to_dict()) == resizing  # kept by index build


def test_a_model_that_resizes_takes_any_image_size_in_embed_and_search(resizing_run, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((4, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "big.npz", x=x, labels=np.arange(4) % 2)
    res = runner.invoke(app, ["embed", str(resizing_run / "run"), "--data",
                              str(tmp_path / "big.npz"), "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(tmp_path / "e.npz")["embeddings"],
                               _expected(resizing_run / "run", x), atol=1e-5)
    res = runner.invoke(app, ["search", str(resizing_run / "idx"), "-q",
                              str(tmp_path / "big.npz"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 4
    np.savez(tmp_path / "rgb.npz", x=rng.random((4, 3, 16, 16)).astype(np.float32),
             labels=np.arange(4) % 2)  # other channels than trained: refused by both
    embed = runner.invoke(app, ["embed", str(resizing_run / "run"), "--data",
                                str(tmp_path / "rgb.npz"), "--out", str(tmp_path / "e.npz")])
    search = runner.invoke(app, ["search", str(resizing_run / "idx"), "-q",
                                 str(tmp_path / "rgb.npz")])
    assert embed.exit_code == search.exit_code == 1
    assert _error(embed) == _error(search) and "any size" in _error(embed)


# --- named .npz arrays ---------------------------------------------------------------


def test_evaluate_and_embed_name_the_arrays_of_a_npz(small, tmp_path):
    x, y = _digits(40)
    np.savez(tmp_path / "plain.npz", x=x, labels=y)
    np.savez(tmp_path / "feats.npz", feats=x, classes=y)
    base = ["evaluate", str(small / "run"), "--sections", "retrieval,clustering"]
    want = runner.invoke(app, [*base, "--data", str(tmp_path / "plain.npz"),
                               "-o", str(tmp_path / "a.json")])
    assert want.exit_code == 0, want.output
    for flags in (["--x-key", "feats", "--labels-key", "classes"],
                  ["--x-key", "feats", "--y-key", "classes"]):
        got = runner.invoke(app, [*base, "--data", str(tmp_path / "feats.npz"), *flags,
                                  "-o", str(tmp_path / "b.json")])
        assert got.exit_code == 0, got.output
        a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
        assert a["retrieval"] == b["retrieval"] and a["clustering"] == b["clustering"]
        assert b["data"] == f"{tmp_path / 'feats.npz'} (x_key=feats, labels_key=classes)"
    res = runner.invoke(app, ["embed", str(small / "run"), "--data", str(tmp_path / "feats.npz"),
                              "--x-key", "feats", "--labels-key", "classes",
                              "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "e.npz")["labels"].tolist() == y.tolist()


@pytest.mark.parametrize("flags, missing", [
    ([], "'x'"), (["--x-key", "feat"], "'feat'"),
    (["--x-key", "feats", "--labels-key", "label"], "'label'")])
def test_a_missing_array_names_the_arrays_the_file_has(small, tmp_path, flags, missing):
    x, y = _digits(10)
    np.savez(tmp_path / "feats.npz", feats=x, classes=y)
    for cmd in ("evaluate", "embed"):
        res = runner.invoke(app, [cmd, str(small / "run"), "--data", str(tmp_path / "feats.npz"),
                                  *flags, "--out", str(tmp_path / "o.x")])
        message = _error(res)
        assert res.exit_code == 1 and missing in message, message
        assert "['feats', 'classes']" in message and "--x-key" in message


def test_array_names_for_data_that_is_no_npz_are_refused(small, tmp_path):
    for data in ("heldout", "digits"):
        res = runner.invoke(app, ["evaluate", str(small / "run"), "--data", data,
                                  "--x-key", "feats", "-o", str(tmp_path / "e.json")])
        assert res.exit_code == 1 and "are for a .npz file" in _error(res)
    np.savez(tmp_path / "emb.npz", embeddings=np.zeros((4, 2), np.float32), labels=np.zeros(4))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "emb.npz"), "--x-key", "x",
                              "--out", str(tmp_path / "idx")])
    assert res.exit_code == 1 and "a file of embeddings is read as it is" in _error(res)


def test_evaluate_a_npz_of_embeddings_with_named_arrays_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 4)).astype(np.float32)
    ids = np.arange(40) % 4
    np.savez(tmp_path / "ids.npz", embeddings=emb, labels=ids)
    np.savez(tmp_path / "named.npz", vecs=emb, who=np.array(["ann", "bob", "cy", "dee"])[ids])
    outs = {}
    for name, flags in (("ids", []), ("named", ["--x-key", "vecs", "--labels-key", "who"])):
        res = runner.invoke(app, ["evaluate", str(tmp_path / f"{name}.npz"), *flags,
                                  "--sections", "retrieval", "-o", str(tmp_path / f"{name}.json")])
        assert res.exit_code == 0, res.output
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())["retrieval"]
    assert outs["ids"] == outs["named"]
    res = runner.invoke(app, ["evaluate", str(tmp_path / "named.npz")])
    assert res.exit_code == 1 and "['vecs', 'who']" in _error(res)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "ids.npz"), "--data", "digits"])
    assert res.exit_code == 1 and "holds embeddings already" in _error(res)


@pytest.mark.parametrize("arrays, words", [
    ({"labels": np.arange(30) % 3}, "one label per embedding row"),
    ({"embeddings": np.full((40, 4), np.nan, np.float32)}, "NaN"),
    ({"embeddings": np.zeros(40, np.float32)}, "(n, dim)"),
    ({"labels": (np.arange(40) % 4) + 0.5}, "integer labels"),
])
def test_bad_embedding_files_are_named(tmp_path, arrays, words):
    data = {"embeddings": np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32),
            "labels": np.arange(40) % 4, **arrays}
    np.savez(tmp_path / "e.npz", **data)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e.npz"), "--sections", "retrieval"])
    message = _error(res)
    assert res.exit_code == 1 and words in message and "e.npz" in message


def test_evaluate_refuses_empty_sections_and_no_episodes(small, tmp_path):
    out = tmp_path / "e.json"
    res = runner.invoke(app, ["evaluate", str(small / "run"), "--sections", ",", "-o", str(out)])
    assert res.exit_code == 1 and "--sections" in _error(res) and not out.exists()
    res = runner.invoke(app, ["evaluate", str(small / "run"), "--episodes", "0", "-o", str(out)])
    assert res.exit_code == 1 and "--episodes" in res.output and not out.exists()
    res = runner.invoke(app, ["evaluate", str(small / "run"), "--metric", "manhattan"])
    assert res.exit_code == 1 and "manhattan" in _error(res)
    assert "retrieval (" not in res.stderr  # refused before embedding and evaluating


def test_outputs_that_cannot_be_written_fail_before_any_work(small, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder.npz").mkdir()
    cases = [(["embed", str(small / "run"), "--out", str(tmp_path / "file" / "e.npz")],
              "is a file"),
             (["embed", str(small / "run"), "--out", str(tmp_path / "folder.npz")], "directory"),
             (["embed", str(small / "run"), "--store", "--out", str(tmp_path / "file")],
              "is a file"),
             (["evaluate", str(small / "run"), "-o", str(tmp_path / "file" / "e.json")],
              "is a file"),
             (["evaluate", str(small / "run"), "-o", str(tmp_path / "folder.npz")], "directory")]
    for cmd, words in cases:
        res = runner.invoke(app, cmd)
        assert res.exit_code == 1 and words in _error(res), cmd


def test_embed_raw_inputs_without_labels_gives_embeddings_alone(small, tmp_path):
    x, _ = _digits(5)
    want = _expected(small / "run", x)
    np.save(tmp_path / "rows.npy", x.reshape(5, 64))  # flat rows: reshaped as search does
    np.savez(tmp_path / "feats.npz", feats=np.round(x * 255).astype(np.uint8))  # no labels
    for data, flags in (("rows.npy", []), ("feats.npz", ["--x-key", "feats"])):
        res = runner.invoke(app, ["embed", str(small / "run"), "--data", str(tmp_path / data),
                                  *flags, "--out", str(tmp_path / "e.npz")])
        assert res.exit_code == 0, res.output
        saved = np.load(tmp_path / "e.npz")
        assert saved.files == ["embeddings", "model_sha256"]  # no labels
        np.testing.assert_allclose(saved["embeddings"], want, atol=2e-3)
    res = runner.invoke(app, ["embed", str(small / "run"), "--data", str(tmp_path / "feats.npz"),
                              "--x-key", "feats", "--labels-key", "who", "--out",
                              str(tmp_path / "e.npz")])
    assert res.exit_code == 1 and "no array 'who'" in _error(res)
    np.save(tmp_path / "big.npy", np.zeros((2, 1, 16, 16), np.float32))
    res = runner.invoke(app, ["embed", str(small / "run"), "--data", str(tmp_path / "big.npy"),
                              "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 1 and "(1, 16, 16)" in _error(res)
