"""``dmlkit text embed|similarity``: sentence embeddings for indexes, search and STS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

text_app = typer.Typer(help="Sentence embeddings (needs the text extra of dmlkit).",
                       no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _model(run_dir: Path | None, device: str):
    if run_dir is not None:
        from dmlkit.runs import load_run
        from dmlkit.service.embedders import embeds_text

        run = load_run(run_dir, device=device)
        if not embeds_text(run):
            raise ValueError(f"{run_dir} is not a text run (its model takes "
                             f"{run.config.data.name} data, not strings); use dmlkit embed")
        return run.model
    from dmlkit.models import SentenceEncoder

    return SentenceEncoder().to(device)


@text_app.command("embed")
def embed(
    data: Path = typer.Argument(
        ..., help="CSV/TSV/JSONL with a 'text' (or 'sentence') column and optionally "
        "'label'; a file of pairs (columns sentence1 and sentence2, or text1 and text2) "
        "embeds both sentences of each pair, all first sentences then all second ones, "
        "without labels. A .txt whose first line is a header naming a 'text' (or "
        "'sentence', 'sentence1') column is tab-separated, as training reads it; any "
        "other .txt holds one text a line."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (embeddings, labels)."),
    run_dir: Path | None = typer.Option(
        None, "--run", help="A text run directory; default: the pretrained all-MiniLM-L6-v2."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Embed texts; the .npz feeds dmlkit index build / search / evaluate.

    A text longer than the model's max_length tokens (256 for the pretrained
    all-MiniLM-L6-v2; a run's model.max_length) is truncated to its first max_length
    tokens, as sentence-transformers does.
    """
    from dmlkit.cli._errors import one_line
    from dmlkit.cli._outputs import check_output_path, existing_inputs
    from dmlkit.text import embed_texts
    from dmlkit.training.device import check_device

    out = out if out.suffix.lower() == ".npz" else out.with_name(out.name + ".npz")  # as numpy
    try:
        check_output_path(out, "--out", existing_inputs({"the data file": data}),
                          what=".npz file", run_dir=run_dir)
        check_device(device, "--device")
        texts, labels, names, what = _read_texts(data)
        if not texts:
            raise ValueError(f"{data} holds no texts")
        model = _model(run_dir, device)
        emb = embed_texts(model, texts, batch_size).numpy()
        _save(out, model, emb, texts, labels, names)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise _fail(one_line(err)) from None
    typer.echo(f"wrote {out}: {emb.shape[0]} embeddings of dimension {emb.shape[1]}"
               + ("" if labels is None else ", with labels") + what)


#: the first columns of a pairs file whose both sentences ``dmlkit text embed`` embeds
_PAIR_COLUMNS = (("sentence1", "text1"), ("sentence2", "text2"))


def _read_texts(data: Path) -> tuple[list[str], Any, list[str] | None, str]:
    """``(texts, labels, class_names, what)`` of the file :func:`embed` reads: labels
    ``(n,)`` int64 or ``None``; ``what`` says which texts a pairs file gave."""
    from dmlkit.data.text import (
        LABEL_COLUMNS,
        TEXT_COLUMNS,
        read_labelled_sentences,
        read_pair_sentences,
        read_records,
        read_sentences,
    )

    if data.suffix.lower() == ".txt" and data.is_file():
        lines = _read_lines(data)
        if not _names_a_column(lines[0] if lines else "", TEXT_COLUMNS + ("text1",)):
            if any("\t" in line for line in lines):
                typer.echo(f"note: {data} has no header row naming a 'text' column, so it "
                           "holds one text a line and its tabs stay in the texts; to read "
                           "it as a table, as training does, begin it with a header row "
                           "(text<TAB>label)", err=True)
            return [line for line in lines if line.strip()], None, None, ""
    rows = read_records(data)
    if not rows:
        raise ValueError(f"{data} holds no rows (only a header, or nothing); add one "
                         "row per text")
    keys = {k for row in rows for k in row}
    if "text" not in keys and "sentence" not in keys and all(
            keys & set(names) for names in _PAIR_COLUMNS):
        first, second = read_pair_sentences(data)
        return (first + second, None, None, f" (the first and the second sentences of "
                f"{len(first)} pairs, in this order)")
    if keys & set(LABEL_COLUMNS):  # (a row without one is then refused, naming it:
        labelled = read_labelled_sentences(data)  # its text would be saved unlabelled)
        return labelled.texts, labelled.labels.numpy(), labelled.class_names, ""
    return read_sentences(data), None, None, ""


def _names_a_column(line: str, names: tuple[str, ...]) -> bool:
    """Whether the first line of a ``.txt`` file is a header row: one of its
    tab-separated fields is one of ``names``, as the readers of
    :mod:`dmlkit.data.text` match a column."""
    return any(field in names for field in line.split("\t"))


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, blank ones too: split at line feeds alone (a
    trailing carriage return dropped), so a text may hold other breaks (U+2028, form
    feed, NEL)."""
    from dmlkit.data.text import read_utf8

    return [line.removesuffix("\r") for line in read_utf8(path).split("\n")]


def _save(out: Path, model: object, emb: object, texts: list[str], labels: object,
          names: list[str] | None) -> None:
    """Write the embeddings ``.npz`` of :func:`embed`."""
    import numpy as np
    import torch

    from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY
    from dmlkit.index.store import model_fingerprint

    # the texts, and the class names (ids are per file: two files' ids of one name can
    # differ, so identify / evaluate / index build compare names when both files have them)
    arrays = {"embeddings": emb, "texts": np.asarray(texts, dtype=str)}
    if isinstance(model, torch.nn.Module):  # the model that embedded them: dmlkit search
        arrays[EMBEDDINGS_MODEL_KEY] = np.asarray(model_fingerprint(model))  # checks it
    if labels is not None:
        arrays["labels"] = labels
        if names is not None:
            arrays["class_names"] = np.asarray(names, dtype=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)


@text_app.command("similarity")
def similarity(
    first: str = typer.Argument(..., help="A sentence."),
    others: list[str] = typer.Argument(..., help="Sentences to compare it with."),
    run_dir: Path | None = typer.Option(None, "--run", help="A text run directory."),
) -> None:
    """Cosine similarity of a sentence to others, most similar first."""
    from dmlkit.text import embed_texts

    for place, text in enumerate([first, *others], 1):
        if not text.strip():
            which = "the first sentence" if place == 1 else f"sentence {place}"
            raise _fail(f"{which} (argument {place}) is {'blank' if text else 'empty'}: "
                        f"{text!r}; give a text to compare")
    try:
        emb = embed_texts(_model(run_dir, "cpu"), [first, *others])
    except (FileNotFoundError, ValueError, TypeError, ImportError) as err:
        raise _fail(str(err)) from None
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = (emb[1:] @ emb[0]).tolist()
    for s, text in sorted(zip(sims, others, strict=True), reverse=True):
        typer.echo(f"{s:.4f}  {text}")


def register(app: typer.Typer) -> None:
    app.add_typer(text_app, name="text")
