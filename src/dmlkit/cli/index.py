"""``dmlkit index build`` and ``dmlkit search``: thin over :mod:`dmlkit.index`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

index_app = typer.Typer(help="Build nearest-neighbour indexes of embeddings.",
                        no_args_is_help=True)
ERRORS = (FileNotFoundError, FileExistsError, ValueError, TypeError, KeyError, ImportError,
          NotImplementedError)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load_arrays(path: Path) -> tuple[Any, Any]:
    """``(x, labels or None)`` from a .npy or .npz file (no pickles)."""
    import numpy as np

    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    with np.load(path, allow_pickle=False) as arrays:
        key = next((k for k in ("embeddings", "x") if k in arrays), None)
        if key is None:
            raise ValueError(f"{path} needs an 'embeddings' (or 'x') array")
        return arrays[key], arrays["labels"] if "labels" in arrays else None


def _image_paths(root: Path) -> list[str]:
    """Image files of a class-folder dataset, in the order its loader reads them."""
    from dmlkit.data.image_folder import IMAGE_SUFFIXES

    out: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        out += [str(p) for p in sorted(class_dir.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    return out


@index_app.command("build")
def build(
    source: Path = typer.Argument(
        ..., help="A run directory (its model embeds --data), or a .npz/.npy of embeddings."
    ),
    data: str = typer.Option(
        "heldout", "--data", help="'heldout', 'train', or any dataset spec (see dmlkit embed)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    factory: str = typer.Option(
        "exact", "--factory",
        help="'exact' (torch, exact) or a faiss factory string: Flat, IVF256,Flat, HNSW32, ...",
    ),
    metric: str = typer.Option("l2", "--metric", help="l2, ip or cosine."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Embed a dataset and store it, with labels and source paths, in an index directory."""
    from dmlkit.index import ExactIndex, FaissIndex

    try:
        paths = payloads = None
        if source.is_file():
            emb, labels = _load_arrays(source)
            info = {"embeddings": str(source)}
        else:
            from dmlkit.data import load_dataset
            from dmlkit.data.load import data_config
            from dmlkit.training import build_splits, embed, load_run

            run = load_run(source, device=device)
            if data in ("heldout", "train"):
                train_set, heldout = build_splits(run.config)
                dataset = heldout if data == "heldout" else train_set
            else:
                dataset = load_dataset(data)
                if data_config(data).name == "image_folder":
                    paths = _image_paths(Path(data))
            emb_t, labels_t = embed(run.model, dataset, device=device)
            emb, labels = emb_t.numpy(), None if labels_t is None else labels_t.numpy()
            names = getattr(dataset, "class_names", None)
            if names is not None and labels is not None:
                payloads = [{"class": names[int(y)]} for y in labels]
            info = {"run_dir": str(source.resolve()), "data": data}
        dim = int(emb.shape[1])
        index = (ExactIndex(dim, metric) if factory == "exact"
                 else FaissIndex(dim, metric, factory))
        index.add(emb, labels=labels, paths=paths, payloads=payloads)
        index.info = info
        index.save(out)
    except ERRORS as err:
        raise _fail(str(err)) from None
    typer.echo(f"indexed {index.ntotal} embeddings of dim {dim} ({factory}, {metric}) in {out}")


def _query_embeddings(queries: list[Path], index: Any, run_dir: Path | None, device: str):
    """Embeddings ``(n, dim)`` and names of the queries (arrays or image files)."""
    import numpy as np

    if len(queries) == 1 and queries[0].suffix in (".npy", ".npz"):
        x, _ = _load_arrays(queries[0])
        x = np.asarray(x)
        names = [f"{queries[0].name}[{i}]" for i in range(x.shape[0])]
        if x.ndim == 2 and x.shape[1] == index.dim:
            return x.astype(np.float32), names
    else:
        names = [str(q) for q in queries]
        x = None
    run_dir = run_dir or (Path(index.info["run_dir"]) if "run_dir" in index.info else None)
    if run_dir is None:
        raise ValueError("raw queries need a model: pass --run RUN_DIR")
    import torch

    from dmlkit.training import embed, load_run

    run = load_run(run_dir, device=device)
    if x is None:
        from dmlkit.data.image_folder import _pillow, resize, to_array, to_mode

        image_cls, cfg = _pillow(), run.config.data
        arrays = []
        for q in queries:
            with image_cls.open(q) as img:
                img = to_mode(img, cfg.color)
                arrays.append(to_array(resize(img, cfg.image_size) if cfg.image_size else img))
        x = np.stack(arrays)
    emb, _ = embed(run.model, torch.as_tensor(np.asarray(x, dtype=np.float32)), device=device)
    return emb.numpy(), names


def search(
    index_dir: Path = typer.Argument(..., help="An index directory (dmlkit index build)."),
    query: list[Path] = typer.Option(
        ..., "--query", "-q",
        help="Image files, or one .npy/.npz of embeddings (or of raw inputs to embed).",
    ),
    k: int = typer.Option(5, "-k", help="Neighbours per query."),
    run_dir: Path | None = typer.Option(
        None, "--run", help="Run whose model embeds raw queries (default: the index's run)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Print the nearest neighbours of each query with their label, path and payload."""
    from dmlkit.index import load_index

    try:
        index = load_index(index_dir)
        x, names = _query_embeddings(query, index, run_dir, device)
        scores, ids = index.search(x, k)
    except ERRORS as err:
        raise _fail(str(err)) from None
    report = []
    for name, row_s, row_i in zip(names, scores, ids, strict=True):
        hits = [{"rank": r + 1, "score": float(s), **(index.metadata([i])[0] or {"id": -1})}
                for r, (s, i) in enumerate(zip(row_s, row_i, strict=True)) if i >= 0]
        report.append({"query": name, "neighbours": hits})
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    score_name = "sq_l2" if index.metric == "l2" else "similarity"
    for item in report:
        typer.echo(f"{item['query']}:")
        typer.echo(f"  {'rank':>4}  {'id':>8}  {score_name:>10}  {'label':>5}  path / payload")
        for h in item["neighbours"]:
            label = "-" if h["label"] is None else h["label"]
            extra = h["path"] or (json.dumps(h["payload"]) if h["payload"] is not None else "")
            typer.echo(f"  {h['rank']:>4}  {h['id']:>8}  {h['score']:>10.4f}  {label!s:>5}  "
                       f"{extra}")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search)
