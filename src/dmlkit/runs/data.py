"""The data a run's model embeds: its own splits, or any dataset read as its training
data was read and checked to be inputs the model was trained on.

``dmlkit embed``, ``dmlkit evaluate`` and ``dmlkit index build`` read their ``--data``
through :func:`run_data`, and ``dmlkit search`` shapes its raw queries with the same
rule (:func:`~dmlkit.runs.queries.check_input_shape`), so every command takes the same
inputs for one run and refuses the same others with the same message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dmlkit.config.schema import DataConfig
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.image_folder import MixedSizesError
from dmlkit.runs.queries import (
    check_input_range,
    check_input_shape,
    recorded_input_spec,
    run_color,
    run_input_spec,
)
from dmlkit.runs.recorded_splits import run_splits
from dmlkit.training.run import Run

SPLITS = ("heldout", "train")
# what a folder of files is read with: the run's own settings (as search reads images)
READ_AS_TRAINED = {
    "image_folder": ("image_size", "color"),
    "audio_folder": ("sample_rate", "crop_seconds", "trim_silence"),
}


def run_data(
    run: Run,
    data: str | Path | DataConfig | dict[str, Any] = "heldout",
    *,
    x_key: str | None = None,
    labels_key: str | None = None,
) -> ArrayDataset:
    """The labelled dataset ``data`` names, as inputs of ``run``'s model.

    Parameters
    ----------
    run : Run
        A loaded run (:func:`~dmlkit.training.run.load_run`).
    data : str, Path, DataConfig or dict
        ``"heldout"`` or ``"train"`` (the run's own splits), or any spec of
        :func:`~dmlkit.data.load_dataset`: a dataset name, a ``.npz`` file, an IDX,
        image or audio folder, a ``.yaml`` config or a data block. Folders named by path
        are read as the run's training data was: as its image or audio folder source
        (:func:`folder_config`), with its image size and colour (or sample rate and
        crop); a data block is read as it says.
    x_key, labels_key : str, optional
        Names of the inputs and labels arrays of a ``.npz`` file (default ``"x"`` and
        ``"labels"``); only for a ``.npz`` ``data``.

    Returns
    -------
    ArrayDataset
        Inputs ``(n, ...)`` in the training inputs' shape (flat rows reshaped), labels.

    Raises
    ------
    ValueError
        When the inputs do not fit the run's model
        (:func:`~dmlkit.runs.queries.check_input_shape`), when array names are given for
        data other than a ``.npz`` file, or when the file lacks a named array (the
        message lists the arrays it has).
    """
    from dmlkit.data.load import data_config, load_dataset

    keyed = x_key is not None or labels_key is not None
    by_path = isinstance(data, (str, Path))  # a spec string, not a data block
    if by_path and str(data) in SPLITS:
        if keyed:
            raise ValueError(f"array names (x_key / labels_key) are for a .npz file; "
                             f"{str(data)!r} is the run's own split")
        # (checked against the data the run recorded: an edited data section warns)
        train, heldout = run_splits(run, str(data))
        return heldout if str(data) == "heldout" else train
    cfg = folder_config(run, data) if by_path else data_config(data)
    text = str(data) if by_path else str(cfg.path or cfg.name)
    if keyed:
        if not by_path or cfg.name != "npz" or Path(text).suffix.lower() != ".npz":
            raise ValueError(f"array names (x_key / labels_key) are for a .npz file; "
                             f"{text!r} is not one")
        cfg = dataclasses.replace(cfg, x_key=x_key or cfg.x_key,
                                  labels_key=labels_key or cfg.labels_key)
    if cfg.name == "npz" and cfg.path is not None:
        check_npz_keys(cfg.path, cfg.x_key, cfg.labels_key)
    as_trained = by_path and cfg.name in READ_AS_TRAINED and Path(text).expanduser().is_dir()
    if as_trained:
        trained = {k: getattr(run.config.data, k) for k in READ_AS_TRAINED[cfg.name]}
        if "color" in trained:  # "auto": the channels the model was trained on
            trained["color"] = run_color(run)
        cfg = dataclasses.replace(cfg, **trained)
    try:
        dataset = load_dataset(cfg)
    except MixedSizesError as err:
        if not as_trained:  # a data block of the caller's: its own data.image_size
            raise
        raise ValueError(mixed_sizes_message(err, run, cfg)) from None
    return fit_to_run(dataset, run, text)


def folder_config(run: Run, data: str | Path) -> DataConfig:
    """The data config of a ``--data`` spec string: a folder of class sub-folders is read
    as the run's own data source where that is an image or audio folder (a folder holding
    both images and ``.wav`` files too, as training read it), not as its files suggest;
    any other spec (and an IDX folder) as :func:`~dmlkit.data.load.data_config` reads it.
    """
    from dmlkit.data.load import data_config, split_part

    kind = run.config.data.name
    text, part = split_part(str(data))
    if kind not in READ_AS_TRAINED or not Path(text).expanduser().is_dir():
        return data_config(data)
    try:
        guessed = data_config(data)
    except ValueError:  # (images and recordings side by side: the run's kind decides)
        guessed = None
    if guessed is not None and guessed.name not in READ_AS_TRAINED:
        return guessed  # (IDX files)
    return DataConfig(name=kind, path=str(Path(text).expanduser()), part=part or "train")


def mixed_sizes_message(err: MixedSizesError, run: Run, cfg: DataConfig) -> str:
    """What to do about a folder of images of several sizes that a run's command reads
    with the run's settings (no ``data.image_size``): give ``--data`` a ``.yaml`` file
    whose data section reads the folder at one size (the run's training image size)."""
    size = run.config.model.get("image_size")
    if size is None:  # the run's training inputs' (an MLP's (1, 8, 8) digits: 8)
        try:
            spec = run_input_spec(run)
        except (OSError, ValueError):  # (its data is gone and no shape recorded)
            spec = recorded_input_spec(run.config.model, any_size=False)
        size = list(spec.shape[-2:]) if spec is not None and len(spec.shape) == 3 else 32
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    size_text = f"[{size[0]}, {size[1]}]" if isinstance(size, (list, tuple)) else str(size)
    block = (f"data: {{name: image_folder, path: {err.root.resolve()}, "
             f"image_size: {size_text}, color: {cfg.color}}}")
    return (f"images under {err.root} differ in size {err.sizes}, and the run reads image "
            "folders at their own size (its config sets no data.image_size); pass --data "
            f"a .yaml file that resizes them, holding: {block} (image_size: the run's "
            f"training image size, or [height, width]); one image of each size: "
            f"{err.examples}")


def npz_arrays(path: str | Path) -> list[str] | None:
    """Names of the arrays of a ``.npz`` file, read from its index without loading them
    (``None`` when it is no readable archive: reading it then says why)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return [n[: -len(".npy")] if n.endswith(".npy") else n for n in archive.namelist()]
    except (OSError, zipfile.BadZipFile):
        return None


def check_npz_keys(path: str | Path, *keys: str) -> None:
    """Raise a ``ValueError`` naming the arrays ``path`` holds when one of ``keys`` is not
    among them (the first key names the inputs, the second the labels)."""
    names = npz_arrays(path)
    if names is None:
        return
    roles = ("inputs", "labels")
    for i, key in enumerate(keys):
        if key not in names:
            role = roles[i] if i < len(roles) else "data"
            raise ValueError(
                f"{path} has no array {key!r} (the {role}); its arrays are {names}: name "
                "them with --x-key and --labels-key (x_key / labels_key)")


def unlabelled_inputs(run: Run, path: str | Path, *, x_key: str | None = None,
                      labels_key: str | None = None) -> Any:
    """Raw inputs without labels, as ``run``'s model takes them: a ``.npy`` file, or the
    inputs array (``x_key``, default ``"x"``) of a ``.npz`` that has no labels
    (``labels_key`` only for the message: a ``.npy`` has no named arrays).

    They are read as :func:`~dmlkit.runs.queries.prepare_inputs` reads search queries:
    ``uint8`` scaled to ``[0, 1]``, flat rows reshaped, other shapes refused; rows holding
    NaN or infinite values are refused by name
    (:func:`~dmlkit.apps.embedding.check_finite_rows`).

    Returns
    -------
    Tensor
        float32 ``(n, *input_shape)``.
    """
    import torch

    from dmlkit.apps.embedding import check_finite_rows
    from dmlkit.data.npz import read_arrays
    from dmlkit.runs.queries import prepare_inputs

    path = Path(path)
    if path.suffix.lower() == ".npy" and (x_key is not None or labels_key is not None):
        raise ValueError(f"{path} is a .npy file of one array; array names (x_key / "
                         "labels_key) are for a .npz file")
    if path.suffix.lower() == ".npz":
        check_npz_keys(path, x_key or "x")
    key = "x" if path.suffix.lower() == ".npy" else x_key or "x"
    x = read_arrays(path, (key,))[key]  # (the file's other arrays are not read)
    check_finite_rows(x, str(path) if path.suffix.lower() == ".npy" else f"{path}: {key!r}")
    return torch.from_numpy(prepare_inputs(x, run_input_spec(run), str(path)))


def has_labels(path: str | Path, labels_key: str | None = None) -> bool:
    """Whether ``path`` (a ``--data`` spec) is labelled data: not a ``.npy`` file, nor a
    ``.npz`` without a ``"labels"`` array. A ``labels_key`` given says it is (reading it
    then names a missing array)."""
    path = Path(path)
    if path.suffix.lower() == ".npy" and path.is_file():
        return False
    if path.suffix.lower() == ".npz" and path.is_file() and labels_key is None:
        names = npz_arrays(path)
        return names is None or "labels" in names
    return True


def fit_to_run(dataset: ArrayDataset, run: Run, source: str) -> ArrayDataset:
    """``dataset`` with its inputs in the shape ``run``'s model was trained on; inputs
    far outside the training inputs' range warn as search queries do
    (:func:`~dmlkit.runs.queries.check_input_range`).

    Raises
    ------
    ValueError
        When the inputs do not fit (see :func:`~dmlkit.runs.queries.check_input_shape`).
    """
    spec = run_input_spec(run)
    shape = check_input_shape(tuple(dataset.x.shape[1:]), spec, source)
    if tuple(dataset.x.shape[1:]) != shape:
        dataset.x = dataset.x.reshape(dataset.x.shape[0], *shape)  # (n, *shape)
    check_input_range(dataset.x, spec, source)
    return dataset


def describe(data: Any, x_key: str | None = None, labels_key: str | None = None) -> str:
    """``data`` as results record it: the spec, with the array names when given."""
    keys = [f"{name}={value}" for name, value in (("x_key", x_key), ("labels_key", labels_key))
            if value is not None]
    return f"{data} ({', '.join(keys)})" if keys else str(data)


__all__ = ["SPLITS", "check_npz_keys", "describe", "fit_to_run", "folder_config", "has_labels",
           "mixed_sizes_message", "npz_arrays", "run_data", "unlabelled_inputs"]
