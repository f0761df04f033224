"""Whether an index holds embeddings of the model about to embed queries for it.

An index holds the embeddings of one model: searched with queries embedded by another
model (another run, or its own run after further training), every neighbour is silently
wrong. Indexes record the run they were built from in their ``info`` (``run_dir``, and
``model_sha256``, the fingerprint of its weights, where recorded);
:func:`check_index_source` compares that with the embedder's. One rule for
``dmlkit serve`` (:mod:`dmlkit.service.provenance`) and ``dmlkit search``; it lives
here so that searching needs none of the service's dependencies.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def _same_path(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _fingerprint_of(run_dir: str) -> str | None:
    """The fingerprint of a run directory's weights, ``None`` when it cannot be loaded."""
    from dmlkit.apps.persistence import run_fingerprint

    try:
        return run_fingerprint(run_dir)
    except (FileNotFoundError, ValueError, OSError):
        return None


def _is_text_run(run_dir: str | None, embedder: Any = None) -> bool:
    """Whether ``run_dir`` is a text run (its model embeds strings: the served embedder
    says so, or the run's ``config.yaml`` names a text data source), which ``dmlkit index
    build RUN`` does not take."""
    if getattr(embedder, "input_kind", None) == "text":
        return True
    if run_dir is None:
        return False
    import yaml

    from dmlkit.config.schema import TEXT_SOURCES

    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    data = config.get("data") if isinstance(config, dict) else None
    return isinstance(data, dict) and data.get("name") in TEXT_SOURCES


def _build_command(run_dir: str, text: bool) -> str:
    """The command that builds an index with the embeddings of ``run_dir`` (a text run's
    index is built from its embeddings of a file of texts)."""
    if text:
        return (f"dmlkit text embed FILE --run {run_dir} -o e.npz, then dmlkit index build "
                "e.npz --out INDEX")
    return f"dmlkit index build {run_dir} ..."


def _stale_export(where: str, export: str, run_dir: str, built_sha: str,
                  served_sha: str) -> None:
    """Refuse an export (``export``) and an index (``where``) of ``run_dir`` that hold two
    different weights of it, naming the one that is not the run's current weights."""
    current = _fingerprint_of(run_dir)
    again = f"dmlkit export {run_dir} --out {export} --force"
    if current == served_sha:
        return  # the export is the run as it is: the index is the stale one
    if current == built_sha:
        raise ValueError(
            f"the served export {export} holds the weights {run_dir} had when it was "
            f"exported, and the run has other weights now (trained further, e.g. --resume), "
            f"the ones {where} was built with: the export is stale; export the run again "
            f"({again})")
    now = ("cannot be loaded now" if current is None
           else "has other weights now than either")
    raise ValueError(
        f"the served export {export} and {where} hold embeddings of two different weights "
        f"of {run_dir}, which {now}: serve an export and an index of the same weights; "
        f"export the run again ({again}) and rebuild the index (dmlkit index build {run_dir}"
        " ...)")


def check_index_source(info: dict[str, Any], embedder: Any, where: str = "the index", *,
                       use: str = "serve") -> None:
    """Refuse to serve an index built with another model than ``embedder``'s.

    Parameters
    ----------
    info : dict
        The index's ``info`` (``run_dir`` and ``model_sha256`` when it was built from a
        run).
    embedder : object or None
        The served embedder (``run_dir`` and ``model_sha256`` attributes, and
        ``export_path`` for an export, whose weights are the run's when it was exported,
        not necessarily its current ones; ``None``: a service of embeddings alone,
        nothing to check).
    where : str
        How messages name the index.
    use : {"serve", "search"}
        Who asks, for the messages' wording: the service, or ``dmlkit search`` embedding
        raw queries with a run (the same rule for both).

    Raises
    ------
    ValueError
        When the index's recorded fingerprint differs from the served model's (another
        run, or the same run trained further since the build, or, for an export, since
        the export: the message names the stale side), or, with no fingerprint
        recorded, when the index names another run whose weights differ.

    Warns
    -----
    UserWarning
        When the index records no fingerprint and its run cannot be compared, or when the
        served model records none (an ONNX export from before ``dmlkit export`` recorded
        ``model_sha256``) while the index names its model.
    """
    if use not in ("serve", "search"):
        raise ValueError(f"use must be 'serve' or 'search', got {use!r}")
    if embedder is None:
        return
    built_dir, built_sha = info.get("run_dir"), info.get("model_sha256")
    served_dir = getattr(embedder, "run_dir", None)
    served_sha = getattr(embedder, "model_sha256", None)
    text = _is_text_run(served_dir, embedder)
    if use == "serve":
        served = served_dir or "the served model"
        the_served, the_one = f"the served {served}", "the one served"
        rebuild = (f"rebuild the index with the served run ({_build_command(served, text)}),"
                   f" or serve the run it was built with{f' ({built_dir})' if built_dir else ''}")
    else:
        served = served_dir or "the model embedding the queries"
        the_served, the_one = f"{served}, which embeds the queries", "the one embedding the queries"
        rebuild = (f"rebuild the index with that run ({_build_command(served, text)}), or "
                   f"embed the queries with the run it was built with"
                   f"{f' (--run {built_dir})' if built_dir else ''}")
    if built_sha is not None and served_sha is not None:
        if built_sha == served_sha:
            return
        if built_dir is not None and served_dir is not None and _same_path(built_dir,
                                                                          served_dir):
            export = getattr(embedder, "export_path", None)
            if export is not None:  # an export: it, not the index, may be the old weights
                _stale_export(where, str(export), built_dir, built_sha, served_sha)
            raise ValueError(
                f"{where} holds embeddings of the weights {built_dir} had when the index was "
                "built, and the run has other weights now (trained further, e.g. --resume): "
                "its embeddings are stale; rebuild the index "
                f"({_build_command(built_dir, text)})")
        raise ValueError(
            f"{where} holds embeddings of another model than {the_one}: it was "
            f"built with the weights of {built_dir or 'another run'}, and {served} has "
            f"other weights or settings (e.g. resolution); {rebuild}")
    if built_dir is None and built_sha is None:
        return  # built from an embeddings file: nothing records its model
    if served_sha is None:
        origin = f" (exported from {served_dir})" if served_dir else ""
        warnings.warn(
            f"the served model{origin} records no fingerprint of its weights (an ONNX export "
            "written before dmlkit export recorded model_sha256 in FILE.onnx.json), so it "
            f"cannot be checked that {where} holds its embeddings; export the run again "
            "(dmlkit export RUN_DIR --out FILE.onnx --force) to have the service check it",
            UserWarning, stacklevel=2)
        return
    if not _same_path(str(built_dir), str(served_dir or "")):
        other = _fingerprint_of(str(built_dir))
        if other is not None and other != served_sha:
            raise ValueError(f"{where} was built with the run {built_dir}, whose model is not "
                             f"{the_served}; {rebuild}")
        if other is None:
            warnings.warn(f"{where} was built with the run {built_dir}, which cannot be loaded "
                          f"now, and records no fingerprint of its weights: it cannot be "
                          f"checked that it holds embeddings of {the_served}",
                          UserWarning, stacklevel=2)
        return
    warnings.warn(f"{where} records no fingerprint of the weights of {built_dir}: if the run "
                  "was trained further after the index was built, its embeddings are stale "
                  f"and searches are wrong; {rebuild.split(', or')[0]}", UserWarning,
                  stacklevel=2)


#: the array of an embeddings ``.npz`` (``dmlkit embed``, ``dmlkit text embed``) that
#: holds the fingerprint of the model that embedded it
#: (:func:`dmlkit.index.store.model_fingerprint`), as an index's ``info`` records it
EMBEDDINGS_MODEL_KEY = "model_sha256"


def embeddings_fingerprint(path: str | Path) -> str | None:
    """The model fingerprint an embeddings file records (:data:`EMBEDDINGS_MODEL_KEY`);
    ``None`` for a ``.npy`` or an ``.npz`` that records none (written by other tools, or
    by a dmlkit before it recorded one)."""
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    if path.suffix.lower() != ".npz":
        return None
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # one .npy array: records none
            return None
        with archive:
            if EMBEDDINGS_MODEL_KEY not in archive.files:
                return None
            value = np.asarray(archive[EMBEDDINGS_MODEL_KEY])
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        # empty, truncated or foreign: the message every reader of .npz files gives
        from dmlkit.data.npz import read_arrays

        read_arrays(path)  # (raises the ValueError naming the file)
        raise ValueError(f"{path} cannot be read ({err}); write it again with numpy "
                         "(np.savez)") from None
    if value.size != 1 or value.dtype.kind not in "US":
        raise ValueError(
            f"{path}: {EMBEDDINGS_MODEL_KEY!r} must hold one string (the SHA-256 of the "
            f"weights of the model that embedded the file, as dmlkit embed records it), got "
            f"shape {value.shape} of dtype {value.dtype}; drop that array or embed again")
    return str(value.reshape(-1)[0])


def check_embeddings_source(info: dict[str, Any], recorded: str | None, source: str,
                            where: str = "the index") -> None:
    """Refuse to search an index with query embeddings (from ``source``) that record the
    fingerprint ``recorded`` of another model than the index records (``info``'s
    ``model_sha256``); either fingerprint missing passes (nothing to compare)."""
    built_sha = info.get(EMBEDDINGS_MODEL_KEY)
    if recorded is None or built_sha is None or recorded == built_sha:
        return
    built_dir = info.get("run_dir")
    embed = (f" (dmlkit embed {built_dir} --data ... --out FILE.npz)" if built_dir else "")
    raise ValueError(
        f"{where} holds embeddings of another model than the query embeddings {source}"
        + (f" (it was built with the weights of {built_dir})" if built_dir else "")
        + ": the two models' weights differ (another run, the run retrained, or the "
        f"pretrained model of a fine-tuned run); embed the queries with the model the index "
        f"was built with{embed}, or rebuild the index from embeddings of the queries' model")


def check_same_model(first: str | Path, second: str | Path, what: str = "they") -> None:
    """Refuse two embeddings files (``first``, ``second``) used together (a gallery and
    its queries, a support set and its queries, calibration and test data) whose recorded
    model fingerprints (:func:`embeddings_fingerprint`) differ: their rows lie in two
    spaces, and every distance between them is meaningless. Either fingerprint missing
    passes (nothing to compare); ``what`` names the pair in the message."""
    a, b = embeddings_fingerprint(first), embeddings_fingerprint(second)
    if a is None or b is None or a == b:
        return
    raise ValueError(
        f"{first} and {second} ({what}) were embedded by models with different weights "
        "(another run, the run retrained, or the pretrained model of a fine-tuned run): "
        "distances between them mean nothing; embed both with the same run "
        "(dmlkit embed RUN_DIR --data ... --out FILE.npz)")


__all__ = ["EMBEDDINGS_MODEL_KEY", "check_embeddings_source", "check_index_source",
           "check_same_model", "embeddings_fingerprint"]
