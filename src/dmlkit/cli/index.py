"""``dmlkit index build`` and ``dmlkit search``: thin over :mod:`dmlkit.index`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._errors import one_line
from dmlkit.cli._index_build import build_from_store, echo_built, echo_recall
from dmlkit.cli._index_checks import check_embeddings as _check_embeddings
from dmlkit.cli._index_checks import check_queries
from dmlkit.cli._index_options import (
    check_query_kind,
    check_search_options,
    index_metric,
    search_options_named,
)
from dmlkit.cli._npz_keys import LABELS_KEY, X_KEY

#: the recall@10 an approximate index's default search breadth is tuned to reach
DEFAULT_TARGET_RECALL = 0.95

index_app = typer.Typer(help="Build nearest-neighbour indexes of embeddings.",
                        no_args_is_help=True)
ERRORS = (OSError, ValueError, TypeError, KeyError, ImportError, NotImplementedError)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load_arrays(path: Path) -> tuple[Any, Any]:
    """``(x, labels or None)`` from a .npy or .npz file (no pickles)."""
    import numpy as np

    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file of embeddings")
    from dmlkit.data.npz import read_arrays

    arrays = read_arrays(path)
    if path.suffix.lower() == ".npy":
        return np.asarray(arrays["x"]), None
    key = next((k for k in ("embeddings", "x") if k in arrays), None)
    if key is None:
        raise ValueError(f"{path} needs an 'embeddings' (or 'x') array")
    return arrays[key], arrays.get("labels")


def _item_labels(path: Path, labels: Any, n: int) -> tuple[Any, list[str] | None]:
    """``((n,) int64 labels or None, class names or None)`` of the ``n`` embeddings of
    ``path`` (a file of them, or a run that embedded them), read as ``dmlkit evaluate``
    reads them: integers (``-1`` = no label), bools, integer-valued floats, or class names
    (numbered in sorted order, the names kept). Errors name ``path``."""
    import numpy as np

    if labels is None:
        return None, None
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"{path}: an index stores one class id per item ((n,) labels), but the "
            f"labels have shape {labels.shape}; store one id per item (e.g. "
            "the leaf: np.unique(labels, axis=0, return_inverse=True)[1]) or drop them")
    if len(labels) != n:
        raise ValueError(f"{path}: 'labels' holds {len(labels)} labels for {n} embeddings; "
                         "give one label per embedding row")
    if labels.dtype.kind in "USO":  # class names
        names, codes = np.unique(labels.astype(str), return_inverse=True)
        return codes.astype(np.int64), [str(v) for v in names]
    from dmlkit.index.base import _as_labels

    try:  # the index's own rule for class ids, with the source named
        return _as_labels(labels, n), None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def _npz_payloads(path: Path, n: int, labels: Any,
                  names: list[str] | None) -> list[dict[str, Any] | None] | None:
    """Each item's ``class`` name and ``text`` when a .npz holds them (dmlkit text embed):
    the class names of string labels, else its ``class_names`` array indexed by the
    labels (items labelled -1 get no class)."""
    if path.suffix.lower() != ".npz":
        return None
    from dmlkit.data.npz import read_arrays

    arrays = read_arrays(path)
    texts = arrays.get("texts")
    if names is None and arrays.get("class_names") is not None and labels is not None:
        names = [str(v) for v in arrays["class_names"].reshape(-1)]
        if len(labels) and int(labels.max()) >= len(names):
            bad = int(labels.max())
            raise ValueError(
                f"{path}: label {bad} has no class name ('class_names' holds {len(names)} "
                f"names, so labels must be -1 or 0..{len(names) - 1}); fix the labels or "
                "the class_names array")
    if texts is None and (names is None or labels is None):
        return None
    out: list[dict[str, Any] | None] = []
    for i in range(n):
        item = {}
        if names is not None and labels is not None and labels[i] >= 0:
            item["class"] = names[int(labels[i])]
        if texts is not None and len(texts) == n:
            item["text"] = str(texts[i])
        out.append(item or None)
    return out


#: ``--k-factor`` of ``index build`` and ``search``
K_FACTOR = typer.Option(
    None, "--k-factor", help="Indexes with a refine stage (e.g. IVF1024,PQ32,RFlat): "
    "candidates re-ranked per neighbour, as a multiple of k (default 4, raised at build "
    "until --target-recall is reached).", show_default=False)


@index_app.command("build")
def build(
    source: Path = typer.Argument(
        ..., help="A run directory (its model embeds --data), a .npz/.npy of embeddings, or "
        "an embedding store directory (dmlkit embed --store; built in chunks)."
    ),
    data: str = typer.Option(
        "heldout", "--data", help="'heldout', 'train', or any dataset spec (see dmlkit "
        "embed); a .npy or a .npz without labels is indexed without labels."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    x_key: str | None = X_KEY,
    labels_key: str | None = LABELS_KEY,
    factory: str = typer.Option(
        "exact", "--factory",
        help="'exact' (torch, exact) or a faiss factory string: Flat, IVF256,Flat, HNSW32, ...",
    ),
    metric: str = typer.Option("l2", "--metric", help="l2 (or euclidean), ip (or dot) or "
                               "cosine."),
    nprobe: int | None = typer.Option(
        None, "--nprobe", help="IVF lists searched per query (default: the fewest that "
        "reach --target-recall on the data)."),
    ef_search: int | None = typer.Option(
        None, "--ef-search", help="HNSW search breadth (default: tuned like --nprobe)."),
    k_factor: float | None = K_FACTOR,
    target_recall: float | None = typer.Option(
        None, "--target-recall", help="Recall@10 vs exact search, in (0, 1], that the "
        "default --nprobe / --ef-search must reach (default 0.95; faiss indexes only).",
        show_default=False),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Embed a dataset and store it, with labels and source paths, in an index directory.

    Approximate indexes report their recall@10 against exact search, measured on up to
    1000 of the indexed items used as queries; unless --nprobe / --ef-search is given,
    the search breadth is widened until that recall reaches --target-recall.
    """
    from dmlkit.index import ExactIndex, FaissIndex
    from dmlkit.index.calibrate import calibrate, check_target_recall
    from dmlkit.index.io import check_replaceable

    try:
        paths = payloads = spec = None
        _check_out(source, out)
        check_replaceable(out)  # fail before embedding, not after
        _check_no_pending_log(out)
        metric = index_metric(metric)  # (euclidean / dot: as dmlkit evaluate names them)
        check_search_options(nprobe=nprobe, ef_search=ef_search)
        if source.is_file() and (x_key is not None or labels_key is not None):
            raise ValueError("--x-key / --labels-key name the arrays of a .npz --data that "
                             "the run embeds; a file of embeddings is read as it is")
        if factory == "exact" and (nprobe, ef_search, k_factor) != (None, None, None):
            raise ValueError("--nprobe / --ef-search / --k-factor apply to faiss indexes "
                             "(--factory IVF..., HNSW..., ...,RFlat), not to the exact index")
        if target_recall is not None:
            check_target_recall(target_recall, "--target-recall")
            if factory == "exact":
                raise ValueError("--target-recall applies to approximate faiss indexes "
                                 "(--factory IVF..., HNSW...); the exact index has recall 1 "
                                 "by definition")
        target_recall = DEFAULT_TARGET_RECALL if target_recall is None else target_recall
        if (source / "manifest.json").is_file() and not (source / "config.yaml").exists():
            with search_options_named():
                return build_from_store(source, out, factory, metric,
                                        {"nprobe": nprobe, "ef_search": ef_search,
                                         "k_factor": k_factor}, target_recall)
        if source.is_file():
            from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY, embeddings_fingerprint

            emb, labels = _load_arrays(source)
            labels, names = _item_labels(source, labels, len(emb))
            model_sha = embeddings_fingerprint(source)  # (dmlkit embed records its model)
            info = {"embeddings": str(source.resolve()),
                    **({EMBEDDINGS_MODEL_KEY: model_sha} if model_sha is not None else {})}
            payloads = _npz_payloads(source, len(emb), labels, names)
        else:
            from dmlkit.runs.data import describe, has_labels, run_data, unlabelled_inputs
            from dmlkit.runs.queries import input_spec, resizes_inputs
            from dmlkit.training import embed, load_run

            run = load_run(source, device=device)
            if has_labels(data, labels_key):
                dataset = run_data(run, data, x_key=x_key, labels_key=labels_key)
            else:  # raw inputs alone (a .npy, a .npz without labels): items without labels
                dataset = unlabelled_inputs(run, data, x_key=x_key, labels_key=labels_key)
            inputs = getattr(dataset, "x", dataset)
            paths = getattr(dataset, "paths", None)  # the files of an image folder
            # what raw queries must look like
            spec = input_spec(inputs, any_size=resizes_inputs(run.model))
            emb_t, labels_t = embed(run.model, dataset, device=device)
            emb = emb_t.numpy()
            labels, _ = _item_labels(source, None if labels_t is None else labels_t.numpy(),
                                     len(emb))
            names = getattr(dataset, "class_names", None)
            if names is not None and labels is not None:
                payloads = [{"class": names[int(y)]} if 0 <= y < len(names) else None
                            for y in labels]
            from dmlkit.index.store import model_fingerprint

            info = {"run_dir": str(source.resolve()),
                    "data": describe(data, x_key, labels_key),
                    "model_sha256": model_fingerprint(run.model)}
        emb = _check_embeddings(source, emb)
        dim = int(emb.shape[1])
        with search_options_named():
            index = (ExactIndex(dim, metric) if factory == "exact"
                     else FaissIndex(dim, metric, factory, nprobe=nprobe,
                                     ef_search=ef_search, k_factor=k_factor))
        try:
            index.add(emb, labels=labels, paths=paths, payloads=payloads)
        except (ValueError, TypeError) as err:  # say which input it is about
            raise type(err)(f"{source}: {err}") from None
        recall = calibrate(index, emb, target=target_recall) if factory != "exact" else None
        index.info = {**info, **(spec.to_dict() if spec is not None else {}),
                      **({"recall": recall} if recall is not None else {})}
        _check_no_pending_log(out)  # again: a server may have started on it meanwhile
        index.save(out)
    except ERRORS as err:
        raise _fail(one_line(err) if isinstance(err, OSError) else str(err)) from None
    echo_built(index, f"indexed {index.ntotal} embeddings of dim {dim} ({factory}, {metric}) "
               f"in {out}")
    echo_recall(index, recall, target_recall)


def _check_no_pending_log(out: Path) -> None:
    """Refuse to rebuild an index that a running ``dmlkit serve`` holds (its shutdown
    checkpoint would write the old index over the build), or whose write-ahead log
    (``OUT.wal``) holds writes not yet checkpointed: the next ``serve`` would replay them
    into the new index (vectors of the old model, deletions of whichever items now hold
    those ids)."""
    try:
        from dmlkit.service.store import IndexInUseError, check_not_served
    except ImportError:  # without the serve extra no dmlkit serve can hold it
        pass
    else:
        try:
            check_not_served(out)
        except IndexInUseError as err:
            raise FileExistsError(str(err)) from None
    wal = out.with_name(out.name + ".wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise FileExistsError(
            f"{wal} holds writes dmlkit serve logged for the index at {out} and has not yet "
            "checkpointed into it; rebuilding the index would have the next serve replay them "
            "into the new one. Start and stop dmlkit serve on the old index once to checkpoint "
            f"them, or delete {wal} to discard them, then build again")


def _check_out(source: Path, out: Path) -> None:
    """Refuse a SOURCE that does not exist, and an --out that is the source or holds it
    (writing the index there would delete the embeddings it is built from)."""
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: give a run directory, a .npz/.npy "
                                "of embeddings or an embedding store directory")
    src, dst = source.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise ValueError(
            f"--out {out} is {'the source' if dst == src else 'a directory holding the source'}"
            f" {source}; writing the index there would delete it: choose another --out")


def _query_embeddings(queries: list[Path], index: Any, run_dir: Path | None, device: str,
                      kind: str = "auto", where: str = "the index"):
    """Embeddings ``(n, dim)`` and names of the queries (an array file or image files).

    Raw inputs are embedded only by the model the index was built with (checked by its
    fingerprint, as ``dmlkit serve`` checks it): another run's, or this run's after
    further training, would put them in another space than the index's vectors."""
    import numpy as np

    from dmlkit.runs.queries import (
        InputSpec,
        expand_queries,
        read_images,
        read_query_array,
        run_color,
        run_input_spec,
    )

    queries = expand_queries(queries)
    own_run = run_dir is None or ("run_dir" in index.info
                                  and Path(index.info["run_dir"]) == run_dir.resolve())
    recorded = run_dir is None and "run_dir" in index.info  # the run the build recorded
    run_dir = run_dir or (Path(index.info["run_dir"]) if "run_dir" in index.info else None)

    def open_run(path: Path) -> Any:
        if recorded and not path.is_dir():  # (moved or deleted since the build)
            raise ValueError(f"the run of {where}, recorded at build as {path}, no longer "
                             "exists there (moved or deleted): pass --run DIR, the run's "
                             "folder now")
        from dmlkit.training import load_run

        return load_run(path, device=device)

    spec = InputSpec.from_info(index.info) if own_run else None
    run = None
    if run_dir is not None and spec is None:
        run = open_run(run_dir)
        spec = run_input_spec(run)
    if queries[0].suffix.lower() in (".npy", ".npz"):
        x, kind = read_query_array(queries[0], index.dim, spec, kind)
        names = [f"{queries[0].name}[{i}]" for i in range(x.shape[0])]
        if kind == "embeddings":  # of the index's model, where both record theirs
            from dmlkit.index.provenance import check_embeddings_source, embeddings_fingerprint

            _check_embeddings(queries[0], x)  # finite, float32-sized: or name the rows

            check_embeddings_source(index.info, embeddings_fingerprint(queries[0]),
                                    str(queries[0]), where)
            return x, names
        source = str(queries[0])
    else:
        if kind == "embeddings":
            raise ValueError("image queries are raw inputs; --as embeddings needs a .npy/.npz")
        names, source, x = [str(q) for q in queries], "query images", None
    if run_dir is None:
        raise ValueError(f"{source} holds raw inputs, which need a model: pass --run RUN_DIR")
    run = run or open_run(run_dir)
    _check_run_matches(index, run_dir, run, where)
    if x is not None:
        return _embed_inputs(run, x, spec, source, device), names
    size, color = run.config.data.image_size, run_color(run, spec)
    if spec is None or not spec.any_size:  # one shape for all: checked per file, stacked
        x = read_images(queries, size, color, spec)  # (n, C, H, W) in [0, 1]
        return _embed_inputs(run, x, spec, source, device), names
    # the model resizes any size itself: embed each size apart, as each image alone
    images = [read_images([q], size, color, spec)[0] for q in queries]  # (C, H, W) each
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        rows_of.setdefault(image.shape, []).append(i)
    parts = [(rows, _embed_inputs(run, np.stack([images[i] for i in rows]), spec, source,
                                  device)) for rows in rows_of.values()]
    out = np.zeros((len(images), parts[0][1].shape[1]), np.float32)
    for rows, emb in parts:
        out[rows] = emb
    return out, names


def _embed_inputs(run: Any, x: Any, spec: Any, source: str, device: str) -> Any:
    """``(n, dim)`` numpy embeddings by ``run``'s model of raw inputs ``x`` (checked and
    scaled as training inputs, see :func:`~dmlkit.runs.queries.prepare_inputs`)."""
    import numpy as np
    import torch

    from dmlkit.runs.queries import prepare_inputs
    from dmlkit.training import embed

    x = prepare_inputs(x, spec, source)
    emb, _ = embed(run.model, torch.as_tensor(np.asarray(x, dtype=np.float32)), device=device)
    return emb.numpy()


def _check_run_matches(index: Any, run_dir: Path, run: Any, where: str) -> None:
    """Refuse to embed queries with another model than the index's (the service's rule,
    :func:`~dmlkit.index.provenance.check_index_source`, with its messages)."""
    from types import SimpleNamespace

    from dmlkit.index.provenance import check_index_source
    from dmlkit.index.store import model_fingerprint

    embedder = SimpleNamespace(run_dir=str(Path(run_dir).resolve()),
                               model_sha256=model_fingerprint(run.model))
    check_index_source(index.info, embedder, where, use="search")


def search(
    index_dir: Path = typer.Argument(..., help="An index directory (dmlkit index build)."),
    more: list[Path] | None = typer.Argument(
        None, help="More query files (images), e.g. -q a.png b.png c.png.", show_default=False),
    query: list[Path] = typer.Option(
        [], "--query", "-q",
        help="Image files or a folder of them, or one .npy/.npz of embeddings or raw inputs "
        "(an .npz says which by its key: 'embeddings' or 'x'; one holding both needs --as).",
    ),
    k: int = typer.Option(5, "-k", "--k", help="Neighbours per query."),
    kind: str = typer.Option(
        "auto", "--as", help="What a .npy query holds, or which array of an .npz to use: "
        "auto, embeddings or inputs (auto refuses a .npy width that fits both, and an .npz "
        "holding both 'embeddings' and 'x')."),
    run_dir: Path | None = typer.Option(
        None, "--run", help="Run whose model embeds raw queries (default: the index's run)."
    ),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF lists searched per query "
                                      "(default: as tuned at build)."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW search breadth."),
    k_factor: float | None = K_FACTOR,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Print the nearest neighbours of each query with their label, path and payload."""
    from dmlkit.index import load_index

    try:
        queries = [*query, *(more or [])]
        check_search_options(k, nprobe, ef_search)
        check_query_kind(kind)
        if not queries:
            raise ValueError("no query given: --query FILE (images, a folder, or a .npy/.npz)")
        index = load_index(index_dir)
        if not index.ntotal:
            raise ValueError(f"the index {index_dir} holds no items, so no query has a "
                             "neighbour: build it from embeddings with rows (dmlkit index "
                             "build), or add items to it")
        given = {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor}
        if any(v is not None for v in given.values()):
            if getattr(index, "kind", "") != "faiss":
                raise ValueError("--nprobe / --ef-search / --k-factor apply to faiss indexes only")
            for key, value in given.items():
                setattr(index, key, getattr(index, key) if value is None else value)
            with search_options_named():
                index._apply_search_params()
        x, names = _query_embeddings(queries, index, run_dir, device, kind,
                                     f"the index {index_dir}")
        check_queries(queries[0], x)
        if x.shape[1] != index.dim:  # embedded by a run's model (files of embeddings fit)
            run_used = run_dir or index.info.get("run_dir")
            raise ValueError(
                f"the model of run {run_used} produces {x.shape[1]}-d embeddings, the index "
                f"{index_dir} holds {index.dim}-d ones: search it with the run it was built "
                "from (--run), or rebuild the index with this run")
        scores, ids = index.search(x, k)
    except ERRORS as err:
        raise _fail(one_line(err) if isinstance(err, OSError) else str(err)) from None
    _note_short_results(index, ids, k)
    report = []
    for name, row_s, row_i in zip(names, scores, ids, strict=True):
        hits = [{"rank": r + 1, "score": float(s), **(index.metadata([i])[0] or {"id": -1})}
                for r, (s, i) in enumerate(zip(row_s, row_i, strict=True)) if i >= 0]
        report.append({"query": name, "neighbours": hits})
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    score_name = index.score_unit
    for item in report:
        typer.echo(f"{item['query']}:")
        typer.echo(f"  {'rank':>4}  {'id':>8}  {score_name:>10}  {'label':>5}  path / payload")
        for h in item["neighbours"]:
            label = "-" if h["label"] is None else h["label"]
            extra = "  ".join(  # both: an image's path and its class name
                [h["path"]] * bool(h["path"])
                + [json.dumps(h["payload"])] * (h["payload"] is not None))
            typer.echo(f"  {h['rank']:>4}  {h['id']:>8}  {h['score']:>10.4f}  {label!s:>5}  "
                       f"{extra}")


def _note_short_results(index: Any, ids: Any, k: int) -> None:
    """One note on stderr when -k is more than the index holds, and one when queries got
    fewer neighbours than ``min(k, ntotal)`` (the lists an IVF index searched held fewer)."""
    n = int(index.ntotal)
    if k > n:
        typer.echo(f"note: -k {k} is more than the index holds: it holds {n} items, so a "
                   f"query gets at most {n} neighbours", err=True)
    found = (ids >= 0).sum(axis=1)
    short = found < min(k, n)
    if not short.any():
        return
    factory = str(getattr(index, "factory", ""))
    hint = ("raise --nprobe to search more IVF lists" if "IVF" in factory or "IMI" in factory
            else "raise --ef-search" if "HNSW" in factory else "rebuild with another factory")
    typer.echo(f"note: {int(short.sum())} of {len(ids)} queries got fewer than "
               f"{min(k, n)} neighbours (the fewest: {int(found.min())}), as the searched "
               f"part of the index held fewer: {hint}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search)
