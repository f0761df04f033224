"""Assertions on the command line's refusals, shared by the CLI tests (typer's
``CliRunner`` results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: a small CNN run on a few digits (explain, report)
SMALL_CNN = """
name: small
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: small_cnn, dim: 8, width: 8}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1}
"""
#: a small MLP run on a few digits (export)
SMALL_MLP = """
name: small
data: {name: digits, max_per_class: 6, max_heldout_per_class: 4}
model: {name: mlp, dim: 4, hidden: [8]}
loss: {name: triplet_margin, margin: 0.2}
training: {epochs: 1, num_threads: 1, progress: false}
"""


def train_small(root: Path, config_text: str) -> Path:
    """Train the YAML ``config_text`` quietly into ``root / "run"`` and return the run."""
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    (root / "small.yaml").write_text(config_text)
    train_run(load_config(root / "small.yaml"), root / "run", log=lambda *a: None)
    return root / "run"


def train_tiny_images(root: Path, channels: int, epochs: int) -> Path:
    """A quiet MLP run (dim 4) on 40 8 x 8 images ``(channels, 8, 8)`` of 4 classes saved
    as ``root / "data.npz"``; returns ``root / "run"``."""
    import numpy as np

    from dmlkit.config import Config
    from dmlkit.training import train_run

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    x = (rng.normal(size=(40, channels, 8, 8)) + labels[:, None, None, None])
    np.savez(root / "data.npz", x=x.astype(np.float32), labels=labels)
    train_run(Config.from_dict({
        "name": "x", "data": {"name": "npz", "path": str(root / "data.npz")},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
        "training": {"epochs": epochs, "num_threads": 1, "progress": False}}), root / "run",
        log=lambda *a: None)
    return root / "run"


def error_line(res: Any, *words: str) -> str:
    """The one ``error: `` line a refused command printed on stderr (warnings may stand
    beside it), with no traceback; it holds each of ``words``."""
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def only_error_line(res: Any, *words: str) -> str:
    """:func:`error_line` of a command that exited with status 1 and printed nothing else
    on stderr."""
    assert res.exit_code == 1, res.output
    line = error_line(res, *words)
    assert [s for s in res.stderr.splitlines() if s.strip()] == [line], res.stderr
    return line


#: a small interactions table (user, item, rating, time): 5 users x 4 of 6 items
INTERACTIONS = "".join(f"u{u},i{(u + t) % 6},{1 + (u * t) % 5},{t}\n"
                       for u in range(5) for t in range(4))


def trained_recommender(runner: Any, app: Any, tmp_path: Any) -> tuple[Any, Any]:
    """``(data file, model directory)`` of ``dmlkit recommend train`` on
    :data:`INTERACTIONS` (1 epoch, 4-d)."""
    data = tmp_path / "t.csv"
    data.write_text(INTERACTIONS)
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "1", "--dim", "4"])
    assert res.exit_code == 0, res.output
    return data, tmp_path / "m"
