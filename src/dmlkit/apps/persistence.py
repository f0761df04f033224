"""Saving and loading application kits without pickle.

A fitted kit is a directory in the format of :mod:`dmlkit.index.io` (written atomically,
every file's size and SHA-256 checked against the manifest on load, arrays read with
``allow_pickle=False``), labelled ``"format": "dmlkit-kit"`` with its own version::

    manifest.json   {"format": "dmlkit-kit", "version": 1, "kind": "Verifier", "dim",
                     "metric", "count", "params": {...}, "files": {...}}
                    (and "feature_names_in", the column names of a kit fitted on a
                    DataFrame, checked against those of the data it is given)
    state.json      the kit's learned scalars and lists
    NAME.npy        its learned arrays (shapes and dtypes listed in state.json)
    index.*         the files of a nearest-neighbour index, for kits that hold one
    PREFIX.KEY.npy  the ``state_dict`` of a network the kit trained (a registered model,
                    rebuilt on load from its config, kept in state.json)

Constructor parameters must be JSON values (numpy scalars and arrays are saved as lists
and numbers and given back as numpy values, their dtypes kept under ``"numpy_params"``);
an ``embedder`` is saved only as a run directory path (a module or callable cannot be
written without pickle). A kit that embeds
with a run also records ``"model_sha256"``, the fingerprint of that run's weights
(:func:`run_fingerprint`): what it learned from their embeddings holds only for those
weights, so loading it once the run's model has changed (training resumed, the run
replaced) raises :class:`StaleKitError`. Kits saved without a fingerprint load with a
warning. A kit fitted on embeddings (no embedder) records the fingerprint of the model
that embedded them when it is given (``dmlkit embed`` writes it into its ``.npz``), so
that embeddings of another model can be refused (:func:`check_kit_model`). A loaded kit
carries its recorded fingerprint as ``model_sha256_`` (``None``: none recorded).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit.index.io import (
    IndexFormatError,
    load_array,
    load_json,
    read_consistent,
    read_manifest,
    with_article,
    write_index_dir,
)

KIT_FORMAT = "dmlkit-kit"
KIT_VERSION = 1
STATE = "state.json"
INDEX_PREFIX = "index."
#: manifest key of the fingerprint of the weights of the run a kit embeds with
FINGERPRINT = "model_sha256"
#: manifest key of the column names of the DataFrame a kit was fitted on
FEATURE_NAMES = "feature_names_in"


class StaleKitError(ValueError):
    """A saved kit whose run's model is not the one it was fitted with."""


def run_fingerprint(run_dir: str | Path) -> str:
    """SHA-256 of the weights of the model of run directory ``run_dir``, as loaded.

    The same fingerprint as :func:`dmlkit.index.store.model_fingerprint` of the run's
    model (and as embedding stores record), so it names the weights whichever file
    (``model.pt`` or the last checkpoint) they come from.

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` is not a run directory (or holds no weights).
    """
    run_dir = Path(run_dir).resolve()
    return _fingerprint_of_files(str(run_dir), run_stamps(run_dir))


def run_stamps(run_dir: str | Path) -> tuple:
    """Modification times and sizes of the files a run's model is loaded from (``None``
    for a missing one): when they are unchanged, so is the model."""
    run_dir = Path(run_dir).resolve()
    return tuple(_stamp(run_dir / name) for name in ("model.pt", "checkpoint.pt", "config.yaml"))


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(modification time in ns, size)`` of the file ``path``, or None (one ``stat``)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size) if stat.S_ISREG(info.st_mode) else None


@functools.lru_cache(maxsize=32)
def _fingerprint_of_files(run_dir: str, stamps: tuple) -> str:
    """:func:`run_fingerprint` for one state of the run's files (``stamps``): a kit saved
    and loaded, or a service checking its index and verifier, loads the run once."""
    from dmlkit.index.store import model_fingerprint
    from dmlkit.runs import load_run

    return model_fingerprint(load_run(run_dir).model)


def run_embedder(estimator: Any) -> str | None:
    """The run directory an estimator embeds with (its ``embedder`` parameter when that
    is a path, other than ``"learn"``), else ``None``."""
    value = getattr(estimator, "embedder", None)
    if isinstance(value, Path) or (isinstance(value, str) and value != "learn"):
        return str(value)
    return None


#: manifest key of the numpy types of parameters saved as JSON values
NUMPY_PARAMS = "numpy_params"


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays (also inside lists, tuples and dicts) as
    JSON values; anything else as it is."""
    if isinstance(value, (np.generic, np.ndarray)) and value.dtype.kind in "biufUS":
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _json_params(estimator: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params as JSON values, types)``: the second names the numpy dtype (and
    ``"array"`` or ``"scalar"``) of each parameter that was a numpy scalar or array, and
    ``"tuple"`` for a tuple, so that :func:`load_kit` gives it back as one."""
    import json

    params = estimator.get_params(deep=False)
    out: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, Path):
            value = str(value)
        if name == "embedder" and isinstance(value, str) and value != "learn":
            # a run directory: absolute, so the kit loads from any working directory
            value = str(Path(value).resolve())
        if isinstance(value, (np.generic, np.ndarray)) and value.dtype.kind in "biufUS":
            types[name] = {"dtype": value.dtype.str,
                           "kind": "array" if isinstance(value, np.ndarray) else "scalar"}
        elif isinstance(value, tuple):  # JSON has lists only: given back as a tuple
            types[name] = {"kind": "tuple"}
        converted = _jsonable(value)
        try:
            json.dumps(converted, allow_nan=True)
        except (TypeError, ValueError):
            if name == "embedder":
                raise TypeError(
                    f"parameter embedder is a {type(value).__name__}, which cannot be saved "
                    "without pickle; pass a run directory path (or embed the data first) to "
                    "save this kit") from None
            raise TypeError(
                f"parameter {name}={value!r} ({type(value).__name__}) is not a JSON value "
                "(a number, string, bool, None, or a list or dict of them), so the kit cannot "
                f"be saved without pickle; set {name} to one and save again") from None
        out[name] = converted
    return out, types


def _numpy_params(params: dict[str, Any], types: Any, path: Path) -> dict[str, Any]:
    """``params`` with those named in ``types`` back as the numpy scalars, arrays and
    tuples they were saved from."""
    if types is None:
        return params
    if not isinstance(types, dict):
        raise IndexFormatError(f"{path}: manifest {NUMPY_PARAMS} must be an object")
    params = dict(params)
    for name, info in types.items():
        if isinstance(info, dict) and info.get("kind") == "tuple" and isinstance(
                params.get(name), list):
            params[name] = tuple(params[name])
            continue
        try:
            dtype = np.dtype(info["dtype"])
            if dtype.kind not in "biufUS" or name not in params:
                raise ValueError(name)
            value = np.asarray(params[name], dtype=dtype)
            if info["kind"] != "array":
                if value.ndim:
                    raise ValueError(name)
                value = value[()]  # a numpy scalar
            params[name] = value
        except (KeyError, TypeError, ValueError):
            raise IndexFormatError(f"{path}: bad numpy type of parameter {name!r}") from None
    return params


def save_kit(
    path: str | Path,
    estimator: Any,
    *,
    arrays: dict[str, np.ndarray],
    state: dict[str, Any],
    count: int,
    index: Any = None,
    model_sha256: str | None = None,
) -> Path:
    """Write a fitted ``estimator`` to directory ``path`` atomically.

    ``arrays`` become ``NAME.npy``; ``state`` (JSON) becomes ``state.json``; ``index`` (a
    :class:`~dmlkit.index.BaseIndex`) is saved with its files prefixed ``index.``.
    ``model_sha256`` is the fingerprint of the model that embedded the data the kit was
    fitted on, recorded for a kit without a run embedder (a kit with one records its
    run's, and refuses another).
    """
    if model_sha256 is not None and not isinstance(model_sha256, str):
        raise TypeError(f"model_sha256 must be a string (a model fingerprint), got "
                        f"{type(model_sha256).__name__}")
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    state = dict(state)
    state["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()}
    header = {
        "kind": type(estimator).__name__,
        "dim": int(getattr(estimator, "n_features_in_", 0)),
        "metric": str(getattr(estimator, "metric", "")),
        "count": int(count),
    }
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        header[FEATURE_NAMES] = [str(name) for name in names]
    header["params"], types = _json_params(estimator)
    if types:
        header[NUMPY_PARAMS] = types
    run_dir = run_embedder(estimator)
    if run_dir is not None:
        loaded = getattr(estimator, "embedder_model_", None)
        if loaded is not None and hasattr(loaded, "check"):
            loaded.check()  # the run's weights are still those the kit was fitted with
        header[FINGERPRINT] = run_fingerprint(run_dir)
        if model_sha256 is not None and model_sha256 != header[FINGERPRINT]:
            raise ValueError(
                f"the kit embeds with the run {run_dir}, but model_sha256 names another "
                "model's weights: a kit with a run records that run's fingerprint; pass "
                "model_sha256 only for a kit fitted on embeddings")
    elif model_sha256 is not None:
        header[FINGERPRINT] = model_sha256
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the index is saved first into a temporary named like the kit's own (.NAME.tmp-PID-*),
    # so that one left by a killed save is removed by the next save's stale-temp cleanup
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
    try:
        writers = {}
        if index is not None:
            index_dir = tmp / "index"
            index.save(index_dir)
            for f in sorted(index_dir.iterdir()):
                writers[INDEX_PREFIX + f.name] = lambda dst, src=f: shutil.copyfile(src, dst)
        return write_index_dir(path, header, arrays, {STATE: state}, writers,
                               format_name=KIT_FORMAT, version=KIT_VERSION)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parse_kit(path: Path, cls: type, manifest: dict[str, Any],
               blobs: dict[str, bytearray]) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """The estimator, state and arrays of one checked save of a kit (:func:`load_kit`)."""
    if manifest["kind"] != cls.__name__:
        raise IndexFormatError(f"{path} holds {with_article(manifest['kind'])}, not "
                               f"{with_article(cls.__name__)}")
    params = manifest.get("params")
    if not isinstance(params, dict):
        raise IndexFormatError(f"{path}: manifest params must be an object")
    params = _numpy_params(params, manifest.get(NUMPY_PARAMS), path)
    try:
        estimator = cls(**params)
    except (TypeError, ValueError) as err:
        raise IndexFormatError(f"{path}: bad saved parameters: {err}") from None
    if STATE not in blobs:
        raise IndexFormatError(f"{path}: the manifest does not list {STATE}")
    state = load_json(path, STATE, blobs=blobs)
    if not isinstance(state, dict) or not isinstance(state.get("arrays"), dict):
        raise IndexFormatError(f"{path}/{STATE} is not a kit state")
    arrays = {}
    for name, info in state["arrays"].items():
        try:
            shape, dtype = tuple(int(s) for s in info["shape"]), np.dtype(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise IndexFormatError(f"{path}/{STATE}: bad description of array {name!r}") from None
        if dtype.hasobject:
            raise IndexFormatError(f"{path}/{STATE}: array {name!r} has object dtype")
        arrays[name] = load_array(path, name, shape, dtype, blobs=blobs)
    return estimator, state, arrays


def load_kit(path: str | Path, cls: type, *, index_files: dict[str, bytearray] | None = None,
             ) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """``(estimator with its saved params, state, arrays)`` of a kit directory.

    Every file is read once and checked against the manifest read with it, so a load
    during a save of ``path`` gets one save whole (:func:`~dmlkit.index.io.read_consistent`).
    ``index_files``, when given, is filled with the bytes of the kit's index files (names
    without their prefix) of that same save, for :func:`load_kit_index`.

    Raises :class:`~dmlkit.index.IndexFormatError` (a ``ValueError``) for a missing,
    corrupt, truncated or foreign directory, or one holding another kind of kit.
    """
    path = Path(path)

    def parse(manifest: dict[str, Any], blobs: dict[str, bytearray]) -> tuple[Any, ...]:
        return (manifest, *_parse_kit(path, cls, manifest, blobs), blobs)

    manifest, estimator, state, arrays, blobs = read_consistent(
        path, parse, format_name=KIT_FORMAT, version=KIT_VERSION)
    if index_files is not None:
        index_files.update({name[len(INDEX_PREFIX):]: data  # (no copy: parsed in place)
                            for name, data in blobs.items() if name.startswith(INDEX_PREFIX)})
    if manifest["dim"]:
        estimator.n_features_in_ = int(manifest["dim"])
    names = manifest.get(FEATURE_NAMES)  # absent: saved before they were recorded
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise IndexFormatError(f"{path}: manifest {FEATURE_NAMES} must be a list of strings")
        estimator.feature_names_in_ = np.asarray(names, dtype=object)
    recorded = manifest.get(FINGERPRINT)
    if recorded is not None and not isinstance(recorded, str):
        raise IndexFormatError(f"{path}: manifest {FINGERPRINT} must be a string")
    check_kit_run(path, estimator, recorded)
    estimator.model_sha256_ = recorded
    return estimator, state, arrays


def kit_model(estimator: Any) -> str | None:
    """The fingerprint of the model whose embeddings a kit was fitted on: its run's
    (embedding with a run), else the one it was saved with (``model_sha256_`` of a loaded
    kit); ``None`` when unknown."""
    run_dir = run_embedder(estimator)
    if run_dir is not None:
        return run_fingerprint(run_dir)
    recorded = getattr(estimator, "model_sha256_", None)
    return recorded if isinstance(recorded, str) else None


def check_kit_model(estimator: Any, recorded: str | None, source: str,
                    where: str = "the kit", *,
                    refit: str = "dmlkit verify / identify ... --save KIT") -> None:
    """Refuse embeddings (from ``source``) whose model fingerprint ``recorded`` differs
    from the one the kit was fitted on (:func:`kit_model`); either fingerprint unknown
    passes (nothing to compare). ``refit`` is the command that fits and saves such a kit,
    named in the message.

    Raises
    ------
    ValueError
        When both are known and differ: what the kit learned from embeddings (a
        verifier's thresholds, a gallery, prototypes, a detector's reference points and
        threshold) holds only for its own model's embeddings.
    """
    fitted = kit_model(estimator)
    if recorded is None or fitted is None or recorded == fitted:
        return
    raise ValueError(
        f"{where} was fitted on embeddings of another model than {source}: what it learned "
        "from them holds only for that model's embeddings; embed with the model it was "
        "fitted on, or fit and save it again on embeddings of this model "
        f"({refit})")


#: how each kind of kit that embeds with a run is fitted and saved again (a stale one)
_REFIT = {
    "Verifier": "dmlkit verify RUN ... --save KIT",
    "Identifier": "re-enroll the gallery: dmlkit identify RUN ... --save KIT",
    "FewShotClassifier": "re-enroll the support set: "
                         "FewShotClassifier(embedder=RUN).fit(...).save(KIT)",
    "MetricOutlierDetector": "dmlkit detect-anomalies RUN --normal ... --save KIT",
}


def check_kit_run(path: str | Path, estimator: Any, recorded: str | None) -> None:
    """Refuse a kit whose run's weights differ from those it was fitted with.

    ``recorded`` is the fingerprint saved with the kit (``None`` for kits saved before
    fingerprints were recorded: a warning, since the run cannot be checked).

    Raises
    ------
    StaleKitError
        When the run directory is gone or its model's weights have changed.
    """
    run_dir = run_embedder(estimator)
    if run_dir is None:
        return
    kind = type(estimator).__name__
    redo = ("fit the kit again with the run's current model and save it again ("
            + _REFIT.get(kind, f"{kind}(embedder=RUN).fit(...).save(KIT)") + ")")
    try:
        current = run_fingerprint(run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise StaleKitError(f"{path} embeds with the run {run_dir}, which cannot be loaded "
                            f"now ({err}); restore the run, or {redo}") from None
    if recorded is None:
        warnings.warn(f"{path} records no fingerprint of the weights of its run {run_dir}, so "
                      "it cannot be checked that the run's model is still the one the kit was "
                      f"fitted with; if it changed since, {redo}. Saving the kit again records "
                      "one.", UserWarning, stacklevel=3)
    elif recorded != current:
        raise StaleKitError(
            f"{path} was fitted with the model of {run_dir} as it was when the kit was saved, "
            "but that run's weights have changed since (training resumed, or the run "
            "replaced): what the kit learned from that model's embeddings does not hold for "
            f"the new model; {redo}")


def load_kit_index(path: str | Path, files: dict[str, bytearray]) -> Any:
    """The nearest-neighbour index saved inside a kit directory, parsed from ``files``:
    the index files :func:`load_kit` read and checked (the same save as the rest of the
    kit; parsed where they lie in memory, never read again)."""
    from dmlkit.index import load_index

    if not files:
        raise IndexFormatError(f"{path} holds no index files")
    return load_index(path, files=files)


def kit_kind(path: str | Path) -> str:
    """The class name of the kit saved in directory ``path`` (its manifest checked)."""
    return str(read_manifest(Path(path), format_name=KIT_FORMAT, version=KIT_VERSION)["kind"])


def module_arrays(module: Any, prefix: str) -> dict[str, np.ndarray]:
    """The ``state_dict`` of a torch ``module`` as arrays named ``PREFIX.KEY``."""
    return {f"{prefix}.{key}": value.detach().cpu().numpy()
            for key, value in module.state_dict().items()}


def load_module(
    path: str | Path, config: Any, arrays: dict[str, np.ndarray], prefix: str
) -> Any:
    """A registered model built from its ``config`` with the weights ``PREFIX.*`` of
    ``arrays``, in eval mode.

    Raises :class:`~dmlkit.index.IndexFormatError` when the config does not build a model
    or the saved weights do not fit it (missing, extra or wrongly shaped tensors).
    """
    import torch

    from dmlkit.models.modes import saved_state_follows
    from dmlkit.registry import MODELS, build_from_config

    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise IndexFormatError(f"{path}: the saved model config {config!r} is not a config")
    try:
        with saved_state_follows():  # (its whole state is loaded below, strictly)
            model = build_from_config(MODELS, config)
    except (TypeError, ValueError) as err:
        raise IndexFormatError(f"{path}: the saved model config does not build: {err}") from None
    start = len(prefix) + 1
    weights = {name[start:]: torch.from_numpy(value.copy())
               for name, value in arrays.items() if name.startswith(prefix + ".")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise IndexFormatError(f"{path}: the saved weights do not fit the model "
                               f"{config['name']!r}: {str(err).splitlines()[0]}") from None
    return model.eval()


__all__ = ["FINGERPRINT", "KIT_FORMAT", "KIT_VERSION", "StaleKitError", "check_kit_model",
           "check_kit_run", "kit_model",
           "run_embedder", "run_fingerprint", "save_kit", "load_kit", "load_kit_index", "kit_kind",
           "module_arrays", "load_module"]
