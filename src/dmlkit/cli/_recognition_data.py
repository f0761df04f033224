"""The data of ``dmlkit verify``, ``identify`` and ``fewshot``: labelled sets read by
:class:`DataReader` (the arrays of a ``.npz`` named by ``--x-key`` / ``--labels-key``),
labels mapped to class names, pair files, seeded splits and the model that embedded them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer

from dmlkit._checks import is_number_text

#: the name an unknown identity (label -1) takes when labels are mapped to class names
UNKNOWN = "<unknown>"


def _warned(call: Any, *args: Any) -> Any:
    """``call(*args)``, its warnings printed as ``warning:`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call(*args)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    return out


def named_labels(arrays: dict[str, Any], source: str, key: str = "labels") -> Any:
    """The labels (array ``key``) of a ``.npz`` (``None`` without), as names when it has
    integer labels and ``class_names`` (files number their classes apart: compare by
    name); ``-1`` stays an unknown identity (:data:`UNKNOWN` among names)."""
    import numpy as np

    labels = arrays.get(key)
    names = arrays.get("class_names")
    if labels is None or names is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        return labels
    names = np.asarray(names).reshape(-1)
    bad = labels[(labels < -1) | (labels >= names.size)]
    if bad.size:
        raise ValueError(f"{source}: its labels index its class_names ({names.size} names), "
                         f"but label {int(bad[0])} is out of range; labels must be in "
                         f"[0, {names.size - 1}], or -1 for an unknown identity")
    unknown = -1 if names.dtype.kind in "iuf" else UNKNOWN
    return np.where(labels < 0, unknown, names[np.clip(labels, 0, None)])


def check_labels_alike(first: tuple[str, Any, dict[str, Any]],
                       second: tuple[str, Any, dict[str, Any]]) -> None:
    """Refuse two labelled inputs (``(source, labels, arrays)``, as :meth:`read` gives)
    whose labels are names in one and numbers in the other because only one ``.npz``
    carries ``class_names`` (:func:`named_labels`): the numbers could never match."""
    import numpy as np

    kinds = [np.asarray(labels).dtype.kind in "USO" for _, labels, _ in (first, second)]
    if kinds[0] == kinds[1]:
        return
    named, plain = (first, second) if kinds[0] else (second, first)
    if "class_names" in named[2] and "class_names" not in plain[2]:
        raise ValueError(
            f"{named[0]} names its classes (its class_names array) but {plain[0]} has none, "
            "so its labels are numbers that no name matches: save the same class_names in "
            "both files, or in neither")


def refuse_unknown(labels: Any, what: str) -> None:
    """Raise a ``ValueError`` when ``labels`` hold the unknown identity (``-1``): items of
    a gallery, a support or a verification set need their identity."""
    import numpy as np

    if labels is None:
        return
    labels = np.asarray(labels)
    unknown = labels == (UNKNOWN if labels.dtype.kind in "USO" else -1)
    if unknown.any():
        raise ValueError(f"{what}: {int(unknown.sum())} items have the unknown label -1; every "
                         "item here needs its identity (unknowns belong among the queries)")


class DataReader:
    """Reads the data options of a command: raw inputs of ``run_dir``'s model when a run
    is given, read as ``dmlkit embed`` and ``search`` read them
    (:mod:`dmlkit.runs.data`, :func:`~dmlkit.runs.queries.prepare_inputs`: ``uint8``
    scaled to [0, 1], flat rows reshaped, other shapes refused, folders read with the
    run's image size and colour, values far outside the training range warned about);
    without a run, the arrays as they are (embeddings or features).

    ``x_key`` and ``labels_key`` name the arrays of every ``.npz`` read (``--x-key``,
    ``--labels-key``); by default the inputs are ``'x'`` (else ``'embeddings'``) and the
    labels ``'labels'`` (a file without it is unlabelled). A named array a file lacks is
    a ``ValueError`` listing the arrays it has. A run is loaded on ``device``
    (``--device``), where :meth:`embed` runs its model."""

    def __init__(self, run_dir: Path | None, x_key: str | None = None,
                 labels_key: str | None = None, device: str = "cpu") -> None:
        self.run_dir = run_dir
        self.device = device
        self.x_key = x_key
        self.labels_key = labels_key
        self._run: Any = None
        self._spec: Any = None

    @property
    def run(self) -> Any:
        if self._run is None:
            from dmlkit.runs import load_run

            self._run = load_run(self.run_dir, self.device)
        return self._run

    def embed(self, x: Any) -> Any:
        """``(n, dim)`` float32 CPU numpy embeddings of the inputs ``x`` (as :meth:`read`
        gives them), by the run's model on its device; ``x`` as they are without a run."""
        import numpy as np

        if self.run_dir is None:
            return np.array(x, dtype=np.float32).reshape(len(x), -1)
        from dmlkit._checks import check_finite_rows
        from dmlkit.runs import embed

        z, _ = embed(self.run.model, np.asarray(x, dtype=np.float32), device=self.device)
        z = z.numpy()
        check_finite_rows(z, "the embedder's output")
        return z

    def _inputs(self, x: Any, source: str) -> Any:
        from dmlkit.runs.queries import prepare_inputs, run_input_spec

        if self._spec is None:
            self._spec = run_input_spec(self.run)
        return _warned(prepare_inputs, x, self._spec, source)

    def read(self, spec: str, option: str) -> tuple[Any, Any, dict[str, Any]]:
        """``(x, labels or None, every array of a .npz)`` of the data ``option`` names."""
        from dmlkit.apps.targets import check_label_values

        x, labels, arrays = self._read(spec, option)
        if len(x) == 0:
            raise ValueError(f"{option} {spec} holds no items")
        if labels is not None:
            try:
                check_label_values(labels, "labels")  # (0.5, NaN: not class ids)
            except ValueError as err:
                raise ValueError(f"{option} {spec}: {err}") from None
        return x, labels, arrays

    def _keys(self, arrays: dict[str, Any], path: Path) -> str:
        """The inputs array of the ``.npz`` ``path``, its named arrays checked present."""
        named = [(k, role) for k, role in ((self.x_key, "inputs"), (self.labels_key, "labels"))
                 if k is not None]
        for k, role in named:
            if k not in arrays:
                raise ValueError(f"{path} has no array {k!r} (the {role}); its arrays are "
                                 f"{sorted(arrays)}: name them with --x-key and --labels-key")
        key = self.x_key or next((k for k in ("x", "embeddings") if k in arrays), None)
        if key is None:
            raise ValueError(f"{path} needs an 'x' (or 'embeddings') array; it has "
                             f"{sorted(arrays)}: name the inputs with --x-key")
        return key

    def _read(self, spec: str, option: str) -> tuple[Any, Any, dict[str, Any]]:
        from dmlkit.cli._embedding_inputs import check_finite_inputs, refuse_embeddings
        from dmlkit.data.npz import read_arrays

        path, run = Path(spec), self.run_dir is not None
        source = f"{option} {spec}"
        if path.suffix.lower() == ".npz" and path.is_file():
            arrays = read_arrays(path)  # (an empty or truncated file: a ValueError naming it)
            key = self._keys(arrays, path)
            refuse_embeddings(path if run else None, self.x_key)  # (a run's model: raw inputs)
            check_finite_inputs(arrays[key], path, key)  # (rows numbered as in the file)
            x = self._inputs(arrays[key], source) if run else arrays[key]
            labels = named_labels(arrays, str(path), self.labels_key or "labels")
            if labels is not None and len(labels) != len(x):
                raise ValueError(f"{path}: {len(x)} items but {len(labels)} labels")
            return x, labels, arrays
        if path.suffix.lower() == ".npy" and path.is_file():
            x = read_arrays(path)["x"]
            check_finite_inputs(x, path, "x")
            return (self._inputs(x, source) if run else x), None, {}
        if spec in ("heldout", "train") and not run:
            raise ValueError(f"{option} {spec} names a split of a run: pass RUN_DIR")
        if run:
            from dmlkit.runs.data import SPLITS, run_data

            data = _warned(run_data, self.run, spec)
            names = None if spec in SPLITS else data.class_names
        else:
            from dmlkit.data import load_dataset

            data = load_dataset(spec)
            names = data.class_names
        labels = data.labels.numpy()
        if names is not None and labels.ndim == 1:
            import numpy as np

            labels = np.asarray(names)[labels]  # folders number their classes apart
        return data.x.numpy(), labels, {}


def read_pairs(path: Path) -> Any:
    """``(m, 2)`` or ``(m, 3)`` int array of a CSV of ``i,j[,same]`` rows (header optional:
    a first row that is not all numbers)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: expected rows i,j or i,j,same")
    skip = 0 if all(is_number_text(v) for v in lines[0].split(",")) else 1
    if skip and len(lines) == 1:
        raise ValueError(f"{path} has a header ({lines[0]!r}) but no pairs")
    try:
        rows = np.loadtxt(lines[skip:], delimiter=",", ndmin=2)
    except ValueError as err:  # (numpy's own advice, usecols, is not this file's fix)
        why = str(err).split("; use `usecols`")[0]
        raise ValueError(f"{path}: expected integer columns i,j or i,j,same ({why})") from None
    if rows.shape[1] not in (2, 3) or not np.all(rows == np.round(rows)):
        raise ValueError(f"{path}: expected integer columns i,j or i,j,same")
    rows = rows.astype(np.int64)
    if (same := np.flatnonzero(rows[:, 0] == rows[:, 1])).size:  # distance 0: always "same"
        typer.echo(f"warning: {path}: {same.size} pair(s) compare an item with itself (row "
                   f"{same[0] + 1} of the pairs: {rows[same[0], 0]},{rows[same[0], 1]}); "
                   "their score is the best possible, which flatters the results: drop "
                   "them", err=True)
    return rows


def split_rows(n: int, fraction: float, seed: int, strata: Any = None) -> tuple[Any, Any]:
    """Seeded split of ``n`` rows: a random ``fraction`` of them, and the others.

    With ``strata`` ``(n,)``, each stratum is split apart (a ``fraction`` of its rows, at
    least one and at most all but one where it has two or more), so both parts keep every
    stratum that has two rows or more."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if strata is None:
        perm = rng.permutation(n)
        cut = int(round(fraction * n))
        return np.sort(perm[:cut]), np.sort(perm[cut:])
    strata = np.asarray(strata).reshape(-1)
    if strata.shape[0] != n:
        raise ValueError(f"strata must have one entry per row ({n}), got {strata.shape[0]}")
    first, second = [], []
    for value in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == value))
        cut = int(round(fraction * rows.size))
        if rows.size >= 2:
            cut = min(max(cut, 1), rows.size - 1)
        first.append(rows[:cut])
        second.append(rows[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def split_pairs(rows: Any, n: int, labels: Any, seed: int, source: str) -> tuple[Any, Any]:
    """Rows of the pairs that fit a threshold and of those that test it: half of each
    kind (same, different) each, so both halves hold both kinds; a ``ValueError`` naming
    the counts where one kind has fewer than two pairs. ``rows`` are ``(m, 2|3)`` pairs
    of a set of ``n`` items (its ``labels`` say which are same without a third column)."""
    from dmlkit.apps.targets import check_targets
    from dmlkit.apps.verifier import check_pairs

    i, j, same = check_pairs(rows, n)
    if same is None:
        if labels is None:
            raise ValueError(f"{source} has no is_same column and the data have no labels: "
                             "add a third column i,j,same")
        y = check_targets(labels, n)
        same = y[i] == y[j]
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if min(n_same, n_diff) < 2:
        raise ValueError(
            f"{source}: half of the pairs fit the threshold and the other half test it, each "
            f"half needing both same and different pairs, but it has {n_same} same and "
            f"{n_diff} different pairs: add pairs of the rarer kind, or fit the threshold on "
            "separate labelled data with --calibrate DATA")
    return split_rows(len(same), 0.5, seed, strata=same)


def data_model(run_dir: Path | None, *specs: str | None) -> str | None:
    """The fingerprint of the model that embedded the data ``specs`` (the first ``.npz``
    that records one, as ``dmlkit embed`` writes it), for a kit fitted on them without a
    run (``None``: a run embeds them, and its kit records the run's)."""
    from dmlkit.index.provenance import embeddings_fingerprint

    if run_dir is not None:
        return None
    for spec in specs:
        if spec is not None and Path(spec).suffix.lower() == ".npz" and Path(spec).is_file():
            recorded = embeddings_fingerprint(spec)
            if recorded is not None:
                return recorded
    return None
