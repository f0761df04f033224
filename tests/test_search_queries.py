"""`dmlkit search` and `dmlkit index build`: what a query file holds is never guessed from
its width, raw inputs are shaped and scaled as in training, approximate indexes reach a
measured recall, interrupted builds leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

# dim 64 = the 8x8 digits' input size: the width alone cannot tell embeddings from inputs
WIDE = """
name: wide
data: {name: digits, max_per_class: 10, max_heldout_per_class: 20}
model: {name: mlp, dim: 64, hidden: [32]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1}
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A run whose embedding dim equals its input size, and an exact index of digits."""
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("wide")
    (root / "wide.yaml").write_text(WIDE)
    train_run(load_config(root / "wide.yaml"), root / "run", log=lambda *a: None)
    res = runner.invoke(app, ["index", "build", str(root / "run"), "--data", "digits",
                              "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    return root


def _ids(output: str) -> list[list[int]]:
    return [[h["id"] for h in q["neighbours"]] for q in json.loads(output)]


def _expected(root, x: np.ndarray, k: int = 5) -> list[list[int]]:
    """Neighbours of raw inputs embedded by the run's model first (the reference)."""
    import torch

    from dmlkit.index import load_index
    from dmlkit.training import embed, load_run

    run = load_run(root / "run")
    emb, _ = embed(run.model, torch.as_tensor(x.reshape(-1, 1, 8, 8), dtype=torch.float32))
    return load_index(root / "idx").search(emb.numpy(), k)[1].tolist()


def _search(root, *args: str):
    return runner.invoke(app, ["search", str(root / "idx"), "-k", "5", "--json", *args])


def test_raw_digit_rows_search_like_their_embeddings(wide, tmp_path):
    from dmlkit.data import load_digits

    rows = load_digits().x[:6].reshape(6, 64).numpy()  # (6, 64): raw pixels in [0, 1]
    want = _expected(wide, rows)
    np.save(tmp_path / "rows.npy", rows)
    # width 64 is both the embedding dim and the input size: refused, not guessed
    res = _search(wide, "-q", str(tmp_path / "rows.npy"))
    assert res.exit_code == 1 and res.stdout == ""
    assert "--as inputs" in res.stderr and "rows.npy" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    res = _search(wide, "-q", str(tmp_path / "rows.npy"), "--as", "inputs")
    assert res.exit_code == 0, res.output
    assert _ids(res.stdout) == want
    np.savez(tmp_path / "rows.npz", x=rows)  # the key says what the file holds
    res = _search(wide, "-q", str(tmp_path / "rows.npz"))
    assert res.exit_code == 0 and _ids(res.stdout) == want
    # as embeddings, the same rows give other neighbours: the reading matters
    res = _search(wide, "-q", str(tmp_path / "rows.npy"), "--as", "embeddings")
    assert res.exit_code == 0 and _ids(res.stdout) != want


def test_uint8_inputs_are_scaled_and_mis_scaled_inputs_warn(wide, tmp_path):
    from dmlkit.data import load_digits

    rows = load_digits().x[:4].reshape(4, 64).numpy()
    as_u8 = np.round(rows * 255).astype(np.uint8)
    np.savez(tmp_path / "u8.npz", x=as_u8)
    res = _search(wide, "-q", str(tmp_path / "u8.npz"))
    assert res.exit_code == 0, res.output
    assert _ids(res.stdout) == _expected(wide, as_u8.astype(np.float32) / 255)
    np.savez(tmp_path / "sk.npz", x=rows * 16)  # scikit-learn's 0..16 digits, unscaled
    with pytest.warns(UserWarning,  # (the index's --data digits: its inputs' range)
                      match=r"range over \[0, 16\].*index was built from inputs in \[0, 1\]"):
        res = _search(wide, "-q", str(tmp_path / "sk.npz"))
    assert res.exit_code == 0


def test_embeddings_npz_and_shapes_that_fit_nothing(wide, tmp_path):
    from dmlkit.index import load_index

    index = load_index(wide / "idx")
    emb = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    np.savez(tmp_path / "e.npz", embeddings=emb)
    res = _search(wide, "-q", str(tmp_path / "e.npz"))
    assert res.exit_code == 0 and _ids(res.stdout) == index.search(emb, 5)[1].tolist()
    np.save(tmp_path / "odd.npy", emb[:, :10])
    res = _search(wide, "-q", str(tmp_path / "odd.npy"))
    assert res.exit_code == 1 and "shape (3, 10)" in res.stderr and "(n, 64)" in res.stderr
    np.savez(tmp_path / "other.npz", y=emb)
    res = _search(wide, "-q", str(tmp_path / "other.npz"))
    assert res.exit_code == 1 and "'embeddings' or 'x'" in res.stderr


def test_an_npz_holding_both_embeddings_and_inputs_is_refused_until_told(wide, tmp_path):
    from dmlkit.data import load_digits
    from dmlkit.index import load_index

    rows = load_digits().x[:3].reshape(3, 64).numpy()
    emb = np.random.default_rng(1).random((3, 64)).astype(np.float32)
    np.savez(tmp_path / "both.npz", x=rows, embeddings=emb)
    res = _search(wide, "-q", str(tmp_path / "both.npz"))
    assert res.exit_code == 1 and res.stdout == ""
    assert "both.npz holds both 'embeddings' and 'x'" in res.stderr
    assert "--as embeddings" in res.stderr and "--as inputs" in res.stderr
    res = _search(wide, "-q", str(tmp_path / "both.npz"), "--as", "inputs")
    assert res.exit_code == 0 and _ids(res.stdout) == _expected(wide, rows)
    res = _search(wide, "-q", str(tmp_path / "both.npz"), "--as", "embeddings")
    assert res.exit_code == 0
    assert _ids(res.stdout) == load_index(wide / "idx").search(emb, 5)[1].tolist()


def _image_folder(tmp_path, image):
    folder = tmp_path / "imgs"
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(3):
            pixels = (np.random.default_rng(10 * c + i).random((8, 8)) * 255).astype(np.uint8)
            image.fromarray(pixels).save(folder / f"c{c}" / f"{i}.png")
    return folder


def test_several_images_per_query_and_corrupt_images(wide, tmp_path):
    image = pytest.importorskip("PIL.Image")
    folder = _image_folder(tmp_path, image)
    res = runner.invoke(app, ["index", "build", str(wide / "run"), "--data", str(folder),
                              "--out", str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output
    a, b = folder / "c0" / "1.png", folder / "c1" / "2.png"
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(a), str(b), "-k", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [q["query"] for q in report] == [str(a), str(b)]
    assert [q["neighbours"][0]["path"] for q in report] == [str(a), str(b)]
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(folder / "c1"), "-k",
                              "1", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 3
    bad = folder / "c1" / "broken.png"
    bad.write_bytes(b.read_bytes()[:40])  # a truncated PNG
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(a), str(bad)])
    assert res.exit_code == 1 and res.stdout == "" and "Traceback" not in res.output
    assert str(bad) in res.stderr and "replace or remove it" in res.stderr
    res = runner.invoke(app, ["index", "build", str(wide / "run"), "--data", str(folder),
                              "--out", str(tmp_path / "ix2")])
    assert res.exit_code == 1 and str(bad) in res.stderr and not (tmp_path / "ix2").exists()


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (nq, n)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_ivf_defaults_reach_recall_and_report_it(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.data import load_digits
    from dmlkit.index import load_index

    x = load_digits().x.reshape(-1, 64).numpy()  # (1797, 64) as "embeddings"
    np.savez(tmp_path / "e.npz", embeddings=x)
    with pytest.warns(UserWarning, match=r"only 1797 vectors.*sqrt\(n\)") as seen:
        res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                                  str(tmp_path / "ivf"), "--factory", "IVF256,Flat"])
    assert not any("PQ" in str(w.message) for w in seen)  # no PQ stage in this factory
    assert res.exit_code == 0, res.output
    assert "WARNING clustering" not in res.output  # faiss's raw line is not printed
    line = next(s for s in res.stdout.splitlines() if s.startswith("recall@10"))
    reported = float(line.split(": ")[1].split()[0])
    assert reported >= 0.95 and "tuned" in line
    index = load_index(tmp_path / "ivf")
    assert index.nprobe > 1 and index.info["recall"]["recall_at_k"] == pytest.approx(reported)
    queries = x[::5]  # an independent check of the saved index: recall@10 vs brute force
    got = index.search(queries, 10)[1]
    want = _exact_top(x, queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.95
    # a breadth given by hand is measured, not changed, and a low recall says so
    with pytest.warns(UserWarning, match="only 1797 vectors"):
        res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                                  str(tmp_path / "ivf1"), "--factory", "IVF256,Flat",
                                  "--nprobe", "1"])
    assert res.exit_code == 0 and "nprobe 1, as given" in res.stdout
    assert "below 0.95" in res.stderr and "--nprobe" in res.stderr
    np.save(tmp_path / "q.npy", queries[:3])
    wide = runner.invoke(app, ["search", str(tmp_path / "ivf1"), "-q", str(tmp_path / "q.npy"),
                               "--nprobe", "256", "-k", "10", "--json"])
    assert wide.exit_code == 0
    assert _ids(wide.stdout) == want[:3].tolist()  # every list visited: exact


def test_hnsw_defaults_reach_recall(tmp_path):
    pytest.importorskip("faiss")
    x = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    np.savez(tmp_path / "e.npz", embeddings=x)
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "h"), "--factory", "HNSW8"])
    assert res.exit_code == 0, res.output
    line = next(s for s in res.stdout.splitlines() if s.startswith("recall@10"))
    assert float(line.split(": ")[1].split()[0]) >= 0.95 and "ef_search" in line


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_dirs_of_killed_builds_are_cleaned(tmp_path):
    from dmlkit.index import ExactIndex
    from dmlkit.index.io import remove_stale_temps

    pid = _dead_pid()
    stale = tmp_path / f".idx.tmp-{pid}-abc"
    stale.mkdir()
    (stale / "vectors.npy").write_bytes(b"half")
    live = tmp_path / f".idx.tmp-{os.getpid()}-xyz"  # this process: not stale
    live.mkdir()
    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    assert not stale.exists() and live.exists()
    # killed between setting the old index aside and moving the new one in: restored
    os.replace(tmp_path / "idx", tmp_path / f".idx.old-{pid}")
    remove_stale_temps(tmp_path / "idx")
    assert (tmp_path / "idx" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", live.name])


def test_sigterm_during_index_build_leaves_nothing(tmp_path):
    np.savez(tmp_path / "e.npz", embeddings=np.eye(8, dtype=np.float32))
    script = f"""
import sys, time
import dmlkit.index.io as io
real_save = io.np.save
def slow_save(*a, **k):
    real_save(*a, **k)
    print("writing", flush=True)
    time.sleep(30)
io.np.save = slow_save
sys.argv = ["dmlkit", "index", "build", {str(tmp_path / 'e.npz')!r}, "--out",
            {str(tmp_path / 'idx')!r}]
from dmlkit.cli.main import main
main()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # inside the temporary directory
    assert any(p.name.startswith(".idx.tmp-") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    start = time.time()
    proc.wait(timeout=20)
    assert time.time() - start < 20 and proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]


def train_grey_folder_run(folder: Path, out: Path) -> None:
    """Train a 1-epoch MLP run on the grey image folder ``folder`` into ``out`` (a third of
    each class held out)."""
    from dmlkit.config import Config
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "name": "imgs", "data": {"name": "image_folder", "path": str(folder),
                                 "color": "grayscale", "test_fraction": 0.34},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
        "training": {"epochs": 1, "num_threads": 1},
    })
    train_run(cfg, out, log=lambda *a: None)


def _image_folder_index(tmp_path):  # noqa: ANN001, ANN202
    """A run trained on a small image folder and ``dmlkit index build`` of its held-out
    split (the default): ``(folder, index)``."""
    image = pytest.importorskip("PIL.Image")
    from dmlkit.index import load_index

    folder = _image_folder(tmp_path, image)
    train_grey_folder_run(folder, tmp_path / "run")
    res = runner.invoke(app, ["index", "build", str(tmp_path / "run"), "--out",
                              str(tmp_path / "ix")])  # --data heldout, the default
    assert res.exit_code == 0, res.output
    return folder, load_index(tmp_path / "ix")


def test_an_image_folder_runs_heldout_index_keeps_the_files(tmp_path):
    folder, index = _image_folder_index(tmp_path)
    paths = [m["path"] for m in index.metadata(index.ids)]
    assert paths and all(p and p.startswith(str(folder)) and p.endswith(".png") for p in paths)


def test_read_query_array_refuses_an_npz_with_both_arrays_unless_told(tmp_path):
    from dmlkit.runs.queries import read_query_array

    path = tmp_path / "both.npz"
    np.savez(path, embeddings=np.ones((2, 4), np.float32), x=np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="holds both 'embeddings' and 'x'"):
        read_query_array(path, 4, None)
    assert read_query_array(path, 4, None, "embeddings")[1] == "embeddings"
    assert read_query_array(path, 4, None, "inputs")[0].shape == (2, 64)


def test_search_shows_an_image_folder_items_path_and_class_name(tmp_path):
    """An image folder's items have a path and a class name: the table shows both (the
    label is a class id, which the folder's name is not)."""
    _, index = _image_folder_index(tmp_path)
    meta = index.metadata(index.ids)[0]
    assert meta["path"] and meta["payload"] == {"class": Path(meta["path"]).parent.name}
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", meta["path"], "-k", "1"])
    assert res.exit_code == 0, res.output
    row = res.output.splitlines()[2]
    assert meta["path"] in row and f'{{"class": "{meta["payload"]["class"]}"}}' in row, row
