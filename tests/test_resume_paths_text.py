"""Text runs resume as image and tabular runs do: their checkpoints keep checksums of the
texts trained on, a resume on changed data is refused before anything is written, and
``train_text_run`` itself checks a resume (settings, checkpoint), not only the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from test_clear_errors import one_error
from test_weak_export_fixes import CharEncoder
from typer.testing import CliRunner

import dmlkit.training.trainer as trainer_module
from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.text import train_text_run
from dmlkit.training import load_checkpoint

SENTENCES = [
    ("A man is playing a guitar.", "music"), ("Someone strums an acoustic guitar.", "music"),
    ("The band played a loud rock song.", "music"), ("A drummer keeps the beat.", "music"),
    ("A chef is slicing onions in the kitchen.", "cooking"),
    ("She is frying eggs in a pan.", "cooking"), ("The soup is boiling on the stove.", "cooking"),
    ("He kneads dough for bread.", "cooking"),
    ("The striker scored a goal in the final minute.", "football"),
    ("The goalkeeper saved a penalty kick.", "football"),
    ("Fans cheered as the team won the match.", "football"),
    ("The referee showed a red card.", "football"),
    ("The stock market fell sharply today.", "finance"),
    ("Investors sold shares after the report.", "finance"),
    ("Interest rates were raised by the bank.", "finance"),
    ("The company reported record profits.", "finance"),
]
PAIRS = [(SENTENCES[i][0], SENTENCES[i + 1][0]) for i in range(len(SENTENCES) - 1)]


def quiet(*_):
    pass


@pytest.fixture(autouse=True)
def tiny_encoder(monkeypatch):
    """A character model in place of the pretrained sentence encoder (fast, offline)."""
    monkeypatch.setattr(trainer_module, "build_model", lambda config: CharEncoder())


def write_data(path, kind: str, edit: bool = False) -> None:
    """The file of a ``kind`` run; ``edit``: one training sentence (labels) or every
    first sentence (pairs, triplets) changed."""
    if kind == "labels":
        rows = [(t + (" Again." if edit and i == 0 else ""), c)
                for i, (t, c) in enumerate(SENTENCES)]
        body = "text,label\n" + "".join(f'"{t}",{c}\n' for t, c in rows)
    elif kind == "pairs":
        body = "sentence1,sentence2,score\n" + "".join(
            f'"{a}{" Yes." if edit else ""}","{b}",{1 + i % 3}\n' for i, (a, b) in enumerate(PAIRS))
    else:
        body = "anchor,positive,negative\n" + "".join(
            f'"{a}{" Yes." if edit else ""}","{b}","{SENTENCES[(i + 6) % 16][0]}"\n'
            for i, (a, b) in enumerate(PAIRS))
    path.write_text(body)


def config(path, kind: str, epochs: int = 2, lr: float = 1e-3) -> Config:
    data = {"name": "text", "path": str(path), "kind": kind}
    if kind == "labels":
        data.update({"split": "classes", "train_classes": ["cooking", "music"]})
    else:
        data["test_fraction"] = 0.34
    loss = {"name": "infonce"} if kind != "triplets" else {"name": "triplet_margin"}
    return Config.from_dict({
        "name": "t", "data": data, "model": {"name": "sentence_encoder"}, "loss": loss,
        "optimizer": {"name": "adam", "lr": lr},
        "training": {"epochs": epochs, "batch_size": 4, "progress": False, "num_threads": 1}})


def interrupted(cfg: Config, out) -> None:
    """``out``: the run of ``cfg`` stopped after its first epoch's checkpoint."""
    def stop(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_text_run(cfg, out, log=quiet, callbacks=(stop,))


@pytest.mark.parametrize(("kind", "changed"), [
    ("labels", "the training texts differ"),
    ("pairs", "the training pairs, the held-out pairs differ"),
    ("triplets", "the training triplets, the held-out triplets differ"),
])
def test_a_text_run_refuses_a_resume_on_changed_data(tmp_path, kind, changed):
    data = tmp_path / "data.csv"
    write_data(data, kind)
    cfg, out = config(data, kind), tmp_path / "run"
    interrupted(cfg, out)
    saved = load_checkpoint(out / "checkpoint.pt")["data"]
    assert saved and all(len(v) == 64 for v in saved.values())  # sha256 of each part
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    write_data(data, kind, edit=True)
    with pytest.raises(ValueError, match=rf"^cannot resume {out}: the data changed since the "
                       rf"run started: {changed} from what its checkpoint was trained on"):
        train_text_run(cfg, out, resume=True, log=quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept
    write_data(data, kind)  # the data it started with: resumes
    result = train_text_run(cfg, out, resume=True, log=quiet)
    assert len(result.history) == 2
    assert load_checkpoint(out / "checkpoint.pt")["data"] == saved


def test_the_cli_refuses_a_text_resume_on_changed_data_in_one_line(tmp_path):
    data = tmp_path / "data.csv"
    write_data(data, "labels")
    out = tmp_path / "run"
    interrupted(config(data, "labels"), out)
    write_data(data, "labels", edit=True)
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(out), "--no-progress"])
    one_error(res, f"cannot resume {out}: the data changed since the run started: the "
              "training texts differ", "restore the data it started with")


def test_train_text_run_checks_a_resume_itself(tmp_path):
    """Settings that differ from the run's, or fewer epochs than done, are refused by the
    library call as the CLI refuses them, before anything is written."""
    data = tmp_path / "data.csv"
    write_data(data, "labels")
    out = tmp_path / "run"
    interrupted(config(data, "labels"), out)
    kept = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"with other settings than it was trained with: "
                       r"optimizer\.lr"):
        train_text_run(config(data, "labels", lr=0.5), out, resume=True, log=quiet)
    (out / "train.log").write_text("")  # (a second epoch's checkpoint is faked below)
    state = load_checkpoint(out / "checkpoint.pt")
    state["epoch"] = 2
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="has already trained 2 epochs; training.epochs 1 "
                       "would shorten it"):
        train_text_run(config(data, "labels", epochs=1), out, resume=True, log=quiet)
    assert (out / "config.yaml").read_text() == kept
    assert not (out / "metrics.json").exists()


def test_a_text_resume_reads_its_checkpoint_once(tmp_path, monkeypatch):
    data = tmp_path / "data.csv"
    write_data(data, "pairs")
    cfg, out = config(data, "pairs"), tmp_path / "run"
    interrupted(cfg, out)
    reads = []
    real = torch.load

    def load(f, *args, **kwargs):
        reads.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    result = train_text_run(cfg, out, resume=True, log=quiet)
    assert len(result.history) == 2
    assert [r for r in reads if r.endswith("checkpoint.pt")] == [str(out / "checkpoint.pt")]
    assert json.loads((out / "metrics.json").read_text())["history"] == result.history
