"""``load_dataset(spec)``: one entry point from a data config (or a short spec string)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit.config.schema import DataConfig
from dmlkit.data.checks import check_inputs
from dmlkit.data.dataset import ArrayDataset, leaf_ids
from dmlkit.data.digits import load_digits
from dmlkit.data.idx import FASHION_MNIST_NAMES, IDX_PARTS, read_fashion_mnist, read_idx_dir
from dmlkit.data.image_folder import class_folders, folder_images, read_image_folder
from dmlkit.data.npz import npz_class_names, read_npz
from dmlkit.data.splits import class_split, limit_per_class, select_classes, stratified_split
from dmlkit.data.tuple_specs import refuse_tuple_data


def data_config(spec: DataConfig | dict[str, Any] | str | Path) -> DataConfig:
    """Normalize a data spec to a :class:`DataConfig`.

    Strings: ``"digits"``, ``"fashion_mnist"``, ``"fashion_mnist:test"`` (a source and
    its part), a ``.npz`` file, a directory (MNIST-format IDX files, else a folder with one
    sub-folder per class of WAV files (``audio_folder``: a speaker folder as
    :func:`dmlkit.data.audio.speaker_files` lists it, WAVs at any depth) or of images), or
    a ``.yaml`` config whose ``data`` section is used. A ``.yaml`` config or data block of
    tuple data (``kind`` pairs / triplets with ``tuples``) is refused: it names no
    labelled dataset (:func:`~dmlkit.data.tuple_specs.refuse_tuple_data`).
    """
    if isinstance(spec, DataConfig):
        return home_expanded(spec)
    if isinstance(spec, dict):
        from dmlkit.config.schema import _section

        data = home_expanded(_section("data", DataConfig, spec))
        refuse_tuple_data(data)
        return data
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"a data spec must be a DataConfig, dict or string, got {type(spec)}")
    text, part = split_part(str(spec))
    if text in ("digits", "fashion_mnist") and not Path(text).exists():
        return DataConfig(name=text, part=part or "train")
    name, colon, other = text.partition(":")
    if colon and name in ("digits", "fashion_mnist") and not Path(text).expanduser().exists():
        return DataConfig(name=name, part=other)  # (refuses the part, naming the choices)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        from dmlkit.config.schema import Config

        data = home_expanded(Config.from_yaml(path).data)
        refuse_tuple_data(data, path)
        return data if part is None else dataclasses.replace(data, part=part)
    if not path.exists():
        raise FileNotFoundError(
            f"data {text!r} is neither a known dataset (digits, fashion_mnist[:train|test]) "
            "nor an existing .npz file, IDX directory, image folder, audio folder "
            "(one sub-folder of .wav files per speaker) or .yaml config"
        )
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return DataConfig(name="npz", path=str(path), part=part or "train")
        if path.suffix.lower() == ".wav":
            raise ValueError(
                f"{path} is one recording, not a dataset: give the folder that holds one "
                "sub-folder of .wav files per speaker (an audio folder)")
        raise ValueError(
            f"unknown data format {path.suffix or path.name!r} for {path}: expected a .npz "
            "file, a directory of IDX files or of class sub-folders of images or of .wav "
            "files (speakers), or a .yaml config"
        )
    if any(path.glob(f"{IDX_PARTS['train'][0]}*")) or any(path.glob(f"{IDX_PARTS['test'][0]}*")):
        return DataConfig(name="idx", path=str(path), part=part or "train")
    from dmlkit.data.audio import is_speaker_folder

    if is_speaker_folder(path):  # speaker folders of WAV files, as the audio loader lists
        from dmlkit.data.image_folder import class_folders, image_files

        if any(image_files(d) for d in class_folders(path)):
            raise ValueError(
                f"{path} holds both images and .wav files in its class folders: name what "
                "to read with a data config (data: {name: image_folder, path: ...} or "
                "{name: audio_folder, path: ...})")
        return DataConfig(name="audio_folder", path=str(path), part=part or "train")
    return DataConfig(name="image_folder", path=str(path), part=part or "train")


#: the official parts a ``SOURCE:part`` spec may name
PARTS = ("train", "test", "all")
#: the data settings that name files (``~`` expanded)
PATH_KEYS = ("path", "tuples", "features")


def split_part(text: str) -> tuple[str, str | None]:
    """``(source, part)`` of a spec string ``SOURCE[:part]``: the text after the last
    ``:`` is a part only when it is one of :data:`PARTS` and the text before it names
    a bundled dataset or an existing path, while the whole text names none (a folder
    ``runs/10:00``, a drive ``C:\\data`` stay whole)."""
    source, colon, part = text.rpartition(":")
    if not colon or part not in PARTS or Path(text).expanduser().exists():
        return text, None
    if source in ("digits", "fashion_mnist") or Path(source).expanduser().exists():
        return source, part
    return text, None


def home_expanded(cfg: DataConfig) -> DataConfig:
    """``cfg`` with ``~`` in its file settings (:data:`PATH_KEYS`) expanded to the home
    folder, as the other file settings of dmlkit are; ``cfg`` itself when none has one."""
    changes = {key: str(Path(value).expanduser()) for key in PATH_KEYS
               if isinstance(value := getattr(cfg, key), str) and value.startswith("~")}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def load_dataset(
    spec: DataConfig | dict[str, Any] | str | Path, part: str | None = None
) -> ArrayDataset:
    """Load the whole dataset a spec names (before any split).

    Parameters
    ----------
    spec : DataConfig, dict, or str
        See :func:`data_config`.
    part : {"train", "test", "all"}, optional
        Official part of IDX datasets; default ``spec.part``.
    """
    cfg = data_config(spec)
    refuse_tuple_data(cfg)  # (a DataConfig of tuple data: no labelled dataset to read)
    return check_inputs(_load(cfg, part or cfg.part), cfg.path or cfg.name)


def _load(cfg: DataConfig, part: str) -> ArrayDataset:
    check_part(cfg.name, part)
    if cfg.name == "digits":
        return load_digits()
    if cfg.name == "fashion_mnist":
        return read_fashion_mnist(part, cfg.path)
    if cfg.name == "idx":
        return read_idx_dir(cfg.path, part)  # type: ignore[arg-type]
    if cfg.name == "npz":
        return read_npz(cfg.path, cfg.x_key, cfg.labels_key)  # type: ignore[arg-type]
    if cfg.name == "image_folder":
        return read_image_folder(cfg.path, cfg.image_size, cfg.color)  # type: ignore[arg-type]
    if cfg.name == "audio_folder":
        from dmlkit.data.audio import load_audio_folder

        return load_audio_folder(cfg.path, cfg.sample_rate, cfg.crop_seconds,  # type: ignore[arg-type]
                                 trim=cfg.trim_silence)
    if cfg.name in ("text", "stsb"):
        raise ValueError(
            f"a {cfg.name!r} run's items are sentences, which this command does not read: "
            "embed them with dmlkit text embed FILE --run RUN_DIR (a .npz that dmlkit "
            "index build, search, evaluate and identify take)")
    raise ValueError(f"unknown data source {cfg.name!r}")


def split_dataset(
    spec: DataConfig | dict[str, Any] | str | Path,
) -> tuple[ArrayDataset, ArrayDataset]:
    """The ``(train, heldout)`` datasets a data config describes.

    ``split: stratified`` holds out a seeded ``test_fraction`` of each class;
    ``split: classes`` trains on ``train_classes`` and holds out ``test_classes`` (unseen).
    With ``heldout_part`` (IDX datasets: ``idx``, ``fashion_mnist``) the held-out side
    comes from that official part, which must not overlap ``part``; other sources have no
    official parts, so ``heldout_part`` there is an error, never the training items
    evaluated again. Hierarchical ``(n, L)`` labels split stratified by leaf class
    (distinct label row). :func:`training_dataset` gives the training side alone.
    """
    cfg = data_config(spec)
    data = load_dataset(cfg)
    other = None
    if cfg.heldout_part is not None and cfg.heldout_part != cfg.part:
        check_heldout_part(cfg)  # (only IDX datasets have other parts)
        other = load_dataset(cfg, part=cfg.heldout_part)
        check_part_shapes(data, other, cfg)
    if data.labels.dim() == 2:
        return _split_hierarchical(data, cfg, other)
    if other is not None:
        heldout = (class_split(other, cfg.train_classes, cfg.test_classes)[1]  # type: ignore[arg-type]
                   if cfg.split == "classes" else other)
    elif cfg.split == "classes":
        heldout = class_split(data, cfg.train_classes, cfg.test_classes)[1]  # type: ignore[arg-type]
    else:
        heldout = stratified_split(data, cfg.test_fraction, cfg.seed)[1]
    if cfg.max_heldout_per_class is not None:
        heldout = limit_per_class(heldout, cfg.max_heldout_per_class, cfg.seed + 1)
    return _training_side(data, cfg), heldout


def training_dataset(spec: DataConfig | dict[str, Any] | str | Path) -> ArrayDataset:
    """The training side of :func:`split_dataset` (the same items in the same order, with
    the same ``max_per_class`` cap and seed) without reading the held-out side where it
    lies apart: an IDX dataset's ``heldout_part`` is not opened, and an image folder split
    by classes decodes only the images of its training classes (with ``color: auto`` the
    other classes' image headers still decide grey or colour, as for the whole folder; an
    unreadable one is skipped). What :func:`split_dataset` would refuse about the class
    lists (overlap, a class absent) is refused alike.
    """
    cfg = data_config(spec)
    if cfg.name == "image_folder" and cfg.split == "classes" and cfg.path:
        return _capped(check_inputs(_image_classes(cfg), cfg.path), cfg)  # (its classes only)
    data = load_dataset(cfg)
    if data.labels.dim() == 2:
        return _split_hierarchical(data, cfg, None)[0]
    return _training_side(data, cfg)


def _training_side(data: ArrayDataset, cfg: DataConfig) -> ArrayDataset:
    """The training items of ``data`` (the loaded ``part``): what both
    :func:`split_dataset` and :func:`training_dataset` train on."""
    if cfg.split == "classes":
        train = class_split(data, cfg.train_classes, cfg.test_classes)[0]  # type: ignore[arg-type]
    elif cfg.heldout_part is not None and cfg.heldout_part != cfg.part:
        train = data  # the held-out side is another part
    else:
        train = stratified_split(data, cfg.test_fraction, cfg.seed)[0]
    return _capped(train, cfg)


def _capped(train: ArrayDataset, cfg: DataConfig) -> ArrayDataset:
    """``train`` with at most ``cfg.max_per_class`` items of each class (seeded)."""
    if cfg.max_per_class is not None:
        train = limit_per_class(train, cfg.max_per_class, cfg.seed)
    return train


def _image_classes(cfg: DataConfig) -> ArrayDataset:
    """:func:`load_image_folder` of ``cfg.path`` reading only the classes
    ``cfg.train_classes`` names (``keep_classes``; the others are listed, not decoded):
    the same items, ids, class names and paths as the whole folder's items of those
    classes. The class lists are checked as :func:`split_dataset` checks them, on the
    folder's listing, before any image is decoded."""
    names, files = folder_images(cfg.path)  # type: ignore[arg-type]
    labels = np.asarray([label for label, _ in files], dtype=np.int64)
    listing = ArrayDataset(np.zeros((len(files), 1), dtype=np.float32), labels, names,
                           [str(file) for _, file in files])
    keep = class_split(listing, cfg.train_classes, cfg.test_classes)[0].classes  # type: ignore[arg-type]
    return read_image_folder(cfg.path, cfg.image_size, cfg.color,  # type: ignore[arg-type]
                             keep_classes=keep)


def check_part_shapes(train: ArrayDataset, heldout: ArrayDataset, cfg: DataConfig) -> None:
    """Refuse a held-out part (``data.heldout_part``) whose items or labels differ in
    shape from the training part's: a model takes one input shape, so the run would train
    and then fail (or score inputs of another size) on the held-out part, and its
    metrics compare labels of one kind (class ids, or rows of one hierarchy)."""
    if tuple(train.labels.shape[1:]) != tuple(heldout.labels.shape[1:]):
        raise ValueError(
            f"data.heldout_part {cfg.heldout_part!r} holds labels of shape "
            f"{tuple(heldout.labels.shape[1:])} per item, but data.part {cfg.part!r} holds "
            f"{tuple(train.labels.shape[1:])}: give both parts labels of one hierarchy "
            "(or both one class id per item)")
    if tuple(train.x.shape[1:]) == tuple(heldout.x.shape[1:]):
        return
    raise ValueError(
        f"data.heldout_part {cfg.heldout_part!r} of {cfg.path or cfg.name} holds items of "
        f"shape {tuple(heldout.x.shape[1:])}, but data.part {cfg.part!r} (the training "
        f"items) holds items of shape {tuple(train.x.shape[1:])}; a model takes one input "
        "shape: give both parts items of one shape, or remove data.heldout_part to split "
        "the training part as data.split says")


#: the sources read by :func:`load_dataset` that have no official parts (every part of
#: them would be all of their items)
PARTLESS_SOURCES = ("digits", "npz", "image_folder", "audio_folder")


def check_part(name: str, part: str) -> None:
    """Refuse a part other than ``"train"`` (the default) of a source without official
    parts (all but ``idx`` and ``fashion_mnist``): every part of it would be all of its
    items, the training items included."""
    if part == "train" or name in ("idx", "fashion_mnist"):
        return
    raise ValueError(
        f"data.part {part!r} names an official part of an IDX dataset (idx, fashion_mnist), "
        f"but a {name!r} source has no parts: that part would be all of its items, the "
        "training items included. Remove data.part (or the ':part' of the data spec); "
        "held-out items are split off as data.split says (stratified: data.test_fraction "
        "of each class; classes: data.test_classes)")


def check_training_data(cfg: DataConfig) -> None:
    """Refuse data settings a new run must not train with (a saved run's config is not
    checked again: its data are rebuilt as they were trained): a ``data.part`` of a
    source without parts (:func:`check_part`), :func:`check_heldout_part`, a ``path``
    on the bundled ``digits`` source, which reads no file (the run would train on the
    digits, not on the file), and an ``image_size`` on a source that reads no image files
    (:func:`check_image_size`)."""
    check_heldout_part(cfg)
    if cfg.tuples is None:  # (a tuple file's items are not read by part)
        check_part(cfg.name, cfg.part)
    check_image_size(cfg)
    if cfg.name == "digits" and cfg.path:
        raise ValueError(
            f"data.name 'digits' (scikit-learn's bundled set) reads no file, but data.path "
            f"is {cfg.path!r}; for your own data, set data.name too (npz, image_folder, "
            "idx, audio_folder or text), or remove data.path")


def check_image_size(cfg: DataConfig) -> None:
    """Refuse ``data.image_size`` where the source does not read it: it resizes the
    images read from files (an image folder, a tuple file's image paths); arrays
    (``.npz``, IDX, the bundled sets) are taken as stored, so the setting would be
    recorded in the run but do nothing."""
    if cfg.image_size is None or cfg.name == "image_folder" or cfg.tuples is not None:
        return
    raise ValueError(
        f"data.image_size {cfg.image_size} resizes images read from an image folder "
        f"(data.name: image_folder), but a {cfg.name!r} source's items are used as "
        "stored; remove data.image_size and let the model resize (e.g. model.resolution "
        "for efficientnet_lite0), or resize the arrays before saving them")


def check_heldout_part(cfg: DataConfig) -> None:
    """Refuse a ``data.heldout_part`` that would hold out training items.

    Only IDX datasets (``idx``, ``fashion_mnist``) have official parts; elsewhere the
    held-out part would be the training data itself. ``part: all`` holds every item, so
    it overlaps any other part (and ``heldout_part: all`` any ``part``).

    Raises
    ------
    ValueError
        Naming the key and what to write instead.
    """
    held = cfg.heldout_part
    if held is None or held == cfg.part:  # the part itself: split as data.split says
        return
    if cfg.name not in ("idx", "fashion_mnist"):
        raise ValueError(
            f"data.heldout_part {held!r} names an official part of an IDX dataset (idx, "
            f"fashion_mnist), but a {cfg.name!r} source has no parts: its held-out items "
            "would be the training items. Remove data.heldout_part; the held-out items are "
            "then split off as data.split says (stratified: data.test_fraction of each "
            "class; classes: data.test_classes)")
    if "all" in (cfg.part, held):
        raise ValueError(
            f"data.part {cfg.part!r} and data.heldout_part {held!r} overlap ('all' holds "
            "both the train and the test part), so held-out items would be training items; "
            "use part: train with heldout_part: test, or remove data.heldout_part to split "
            "one part as data.split says")


def check_training_classes(train: ArrayDataset, cfg: DataConfig) -> None:
    """Refuse labelled training data of fewer than two classes.

    Metric learning learns from items of other classes (the negatives of every loss and
    miner), and retrieval metrics over one class are trivially perfect, so such a run
    would train nothing and report full marks.
    """
    if train.num_classes >= 2:
        return
    which = ("no items" if len(train) == 0 else
             f"one class ({_class_label(train, train.classes[0])}, {len(train)} items)")
    source = cfg.path or cfg.name
    raise ValueError(
        f"the training data of {source} holds {which}; metric learning needs at least 2 "
        "classes (items of other classes are the negatives it learns from). Give data with "
        "more classes (image / audio folders: one sub-folder per class or speaker)"
        + (", or more data.train_classes" if cfg.split == "classes" else ""))


def check_heldout(heldout: ArrayDataset, train: ArrayDataset, cfg: DataConfig) -> None:
    """Refuse an empty held-out split before a run trains: the run evaluates on it, so it
    would train and then have nothing to report. Says why it is empty and what to set.
    A held-out split of one class is warned about (:func:`warn_one_heldout_class`)."""
    if len(heldout):
        warn_one_heldout_class(heldout, cfg)
        return
    source = cfg.path or cfg.name
    if cfg.heldout_part is not None and cfg.heldout_part != cfg.part:
        why = f"data.heldout_part {cfg.heldout_part!r} holds no items" + (
            " of data.test_classes" if cfg.split == "classes" else "")
        fix = "name a part that holds items, or remove data.heldout_part"
    elif cfg.split == "classes":
        why = "data.test_classes hold no items"
        fix = "list classes that have items in data.test_classes"
    else:
        classes = int(torch.unique(leaf_ids(train.labels)).numel()) if len(train) else 0
        why = (f"data.split stratified holds out data.test_fraction ({cfg.test_fraction}) "
               f"of each class of two or more items, but each of the {classes} classes "
               "has a single item")
        fix = ("give each class at least 2 items (3 or more, so that some stay for "
               "training), or hold out whole classes: data.split: classes with "
               "data.test_classes")
    raise ValueError(f"the held-out split of {source} is empty: {why}; there would be "
                     f"nothing to evaluate the run on: {fix}")


def warn_one_heldout_class(heldout: ArrayDataset, cfg: DataConfig) -> None:
    """Warn, before a run trains, when its held-out split holds a single class: every
    held-out item is then a positive of every other, so the held-out retrieval metrics
    are trivially 1.0 (NaN for a single item) and say nothing of the learned metric.
    A warning, not a refusal:
    the model still trains on two or more classes (:func:`check_training_classes`), and
    its embeddings of the held-out items remain of use (a report, a search index)."""
    labels = heldout.labels
    if labels.dtype == torch.bool or torch.unique(leaf_ids(labels)).numel() != 1:
        return
    import warnings

    if cfg.heldout_part is not None and cfg.heldout_part != cfg.part:
        fix = "name a data.heldout_part that holds items of two or more classes"
    elif cfg.split == "classes":
        fix = ("list at least 2 classes in data.test_classes" if cfg.test_classes is not
               None else "hold out at least 2 classes (those not in data.train_classes): "
               "train on fewer classes, or give data of more classes")
    else:
        fix = ("give two or more classes at least 2 items each (data.split stratified "
               "holds out a share of each class of two or more items)")
    which, n = _class_label(heldout, heldout.classes[0]), len(heldout)
    what = (f"one class ({which}, {n} items): each held-out item is a positive of every "
            "other, so the run's held-out retrieval metrics will be trivially 1.0" if n > 1
            else f"a single item (class {which}): it has no positive to retrieve, so the "
            "run's held-out retrieval metrics will be NaN")
    warnings.warn(f"the held-out split of {cfg.path or cfg.name} holds {what} and say nothing "
                  f"of the learned metric; {fix}", UserWarning, stacklevel=3)


def _class_label(data: ArrayDataset, cls: Any) -> str:
    names = data.class_names
    if isinstance(cls, int) and names is not None and 0 <= cls < len(names):
        return f"{cls}: {names[cls]!r}"
    return str(cls)


def _split_hierarchical(data: ArrayDataset, cfg: DataConfig, other: ArrayDataset | None,
                        ) -> tuple[ArrayDataset, ArrayDataset]:
    """:func:`split_dataset` for ``(n, L)`` labels: stratified by leaf class (label row),
    the caps per leaf class. With a held-out part (``data.heldout_part``, read as
    ``other`` where the caller needs it) the training side is all of ``data`` and the
    held-out side ``other`` (``data`` again, unused, where ``other`` is None)."""
    if cfg.split == "classes":
        raise ValueError(
            "data.split 'classes' holds out (n,) class ids, but the labels are hierarchical "
            f"{tuple(data.labels.shape)}; use split: stratified (each leaf class, i.e. "
            "distinct label row, on both sides)")
    def positions(part: ArrayDataset) -> ArrayDataset:  # the (n,) splits run on item
        return ArrayDataset(torch.arange(len(part))[:, None], leaf_ids(part.labels))  # rows

    if cfg.heldout_part is not None and cfg.heldout_part != cfg.part:
        train = positions(data)  # the held-out side is another part
        heldout = positions(data if other is None else other)
    else:
        train, heldout = stratified_split(positions(data), cfg.test_fraction, cfg.seed)
        other = data
    if cfg.max_per_class is not None:
        train = limit_per_class(train, cfg.max_per_class, cfg.seed)
    if cfg.max_heldout_per_class is not None:
        heldout = limit_per_class(heldout, cfg.max_heldout_per_class, cfg.seed + 1)
    return data.subset(train.x[:, 0]), (data if other is None else other).subset(heldout.x[:, 0])


def class_names(spec: DataConfig | dict[str, Any] | str | Path) -> list[str] | None:
    """The class names of the data a spec names (``class_names[id]``), without loading
    its items: the sub-folder names of image and audio folders, an ``.npz`` file's
    ``class_names`` array, Fashion-MNIST's names; ``None`` where the data has none or
    cannot be read (for messages only)."""
    cfg = data_config(spec)
    try:
        if cfg.name in ("image_folder", "audio_folder") and cfg.path:
            return [p.name for p in class_folders(Path(cfg.path))]
        if cfg.name == "npz" and cfg.path:
            import numpy as np

            with np.load(cfg.path, allow_pickle=False) as archive:
                if "class_names" in getattr(archive, "files", ()):
                    return npz_class_names(archive["class_names"], cfg.path)
        if cfg.name == "fashion_mnist":
            return list(FASHION_MNIST_NAMES)
    except (OSError, ValueError):
        return None
    return None


def describe(cfg: DataConfig) -> str:
    """A one-line description of a data config (for logs and tables)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    defaults = {f.name: getattr(DataConfig(), f.name) for f in dataclasses.fields(cfg)}
    changed = {k: v for k, v in fields.items() if v != defaults[k] and k != "name"}
    return cfg.name + (
        "" if not changed else " " + " ".join(f"{k}={v}" for k, v in changed.items())
    )


__all__ = ["data_config", "load_dataset", "split_dataset", "training_dataset",
           "check_heldout", "check_heldout_part", "check_image_size", "check_part",
           "check_part_shapes", "check_training_data", "PARTLESS_SOURCES", "home_expanded",
           "split_part",
           "check_training_classes", "class_names", "describe", "select_classes",
           "warn_one_heldout_class"]
