"""``dmlkit text embed|similarity``: sentence embeddings for indexes, search and STS."""

from __future__ import annotations

from pathlib import Path

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
    data: Path = typer.Argument(..., help="CSV/TSV/JSONL with a 'text' (or 'sentence') "
                                "column and optionally 'label', or a .txt of one text a line."),
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
    from dmlkit.data.text import (
        LABEL_COLUMNS,
        read_labelled_sentences,
        read_records,
        read_sentences,
    )
    from dmlkit.text import embed_texts
    from dmlkit.training.device import check_device

    out = out if out.suffix.lower() == ".npz" else out.with_name(out.name + ".npz")  # as numpy
    names = None
    try:
        check_output_path(out, "--out", existing_inputs({"the data file": data}),
                          what=".npz file", run_dir=run_dir)
        check_device(device, "--device")
        if data.suffix.lower() == ".txt" and data.is_file():
            texts, labels = _read_lines(data), None
        else:
            rows = read_records(data)
            if not rows:
                raise ValueError(f"{data} holds no rows (only a header, or nothing); add one "
                                 "row per text")
            if any(k in row for row in rows for k in LABEL_COLUMNS):  # (a row without
                # one is then refused, naming it: its text would be saved unlabelled)
                labelled = read_labelled_sentences(data)
                texts, labels = labelled.texts, labelled.labels.numpy()
                names = labelled.class_names
            else:
                texts, labels = read_sentences(data), None
        if not texts:
            raise ValueError(f"{data} holds no texts")
        model = _model(run_dir, device)
        emb = embed_texts(model, texts, batch_size).numpy()
        _save(out, model, emb, texts, labels, names)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise _fail(one_line(err)) from None
    typer.echo(f"wrote {out}: {emb.shape[0]} embeddings of dimension {emb.shape[1]}"
               + ("" if labels is None else ", with labels"))


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, one text a line: split at line feeds
    alone (a trailing carriage return dropped), so a text may hold other breaks (U+2028,
    form feed, NEL)."""
    from dmlkit.data.text import read_utf8

    lines = (line.removesuffix("\r") for line in read_utf8(path).split("\n"))
    return [line for line in lines if line.strip()]


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
