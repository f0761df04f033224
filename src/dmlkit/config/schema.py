"""The training configuration: dataclasses that round-trip to YAML.

``model``, ``loss``, ``miner`` and ``sampler`` are ``{"name": ..., **params}`` mappings
resolved through the registries, so any registered class works by name::

    loss: {name: triplet_margin, margin: 0.1}
    miner: {name: batch_hard}

``imports`` lists modules (or ``.py`` files) to import first, whose ``@register_*``
classes the config may then name (:mod:`dmlkit.user_modules`)::

    imports: [myplugin]
    model: {name: my_mlp}

Unknown keys are errors that name the key and its section.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlkit._suggest import did_you_mean
from dmlkit.config.field_rules import (
    check_class_split,
    check_fields,
    check_miner_for_loss,
    check_parts_for_data,
    check_sampler_supplied,
    check_tuple_file_keys,
    check_val_classes,
    class_list,
    coerce_scalar,
    is_int,
)
from dmlkit.config.param_types import check_param_types
from dmlkit.config.run_name import check_run_name
from dmlkit.config.tune import TuneConfig

DATA_SOURCES = ("digits", "fashion_mnist", "idx", "npz", "image_folder", "text", "stsb",
                "audio_folder")
TEXT_SOURCES = ("text", "stsb")


@dataclass
class DataConfig:
    """Where the data comes from and how it is split into training and held-out parts.

    Attributes
    ----------
    name : {"digits", "fashion_mnist", "idx", "npz", "image_folder", "text", "stsb", "audio_folder"}
    path : str, optional
        File or directory (``idx``: a directory of MNIST-format files; ``fashion_mnist``:
        defaults to Debian's ``/usr/share/datasets/fashion-mnist``).
    part, heldout_part : {"train", "test", "all"}
        Official part of IDX datasets to train on, and to take held-out data from
        (``None``: split ``part`` itself).
    x_key, labels_key : str
        Array names in an ``.npz`` file.
    image_size : int or [int, int], optional
        Resize side (or ``[height, width]``) of images read from a folder.
    color : {"auto", "grayscale", "rgb"}
        Channels of images read from a folder: ``"auto"`` reads 3 (RGB) when any image
        of the folder is colour, else 1 (see :func:`dmlkit.data.image_folder.folder_color`).
    split : {"stratified", "classes"}
        ``"stratified"``: a seeded ``test_fraction`` of each class is held out.
        ``"classes"``: train on ``train_classes``, evaluate on unseen ``test_classes``.
    train_classes, test_classes : list of int or str, optional
        Class ids, or class names where the data has them (image and audio folders:
        the sub-folder names; ``.npz``: its ``class_names`` array). Only ``split:
        classes`` reads them; with another split they are refused.
    max_per_class, max_heldout_per_class : int, optional
        Seeded caps on items per class, to keep runs short.
    seed : int
        Seed of the split and of the caps.
    augment_shift, augment_hflip : int, bool
        Training-image augmentation (:mod:`dmlkit.data.augment`): random shifts of up to
        ``augment_shift`` pixels and random left-right flips, seeded by ``seed``.
    augment : dict, optional
        More image augmentation, per batch on the tensors (:class:`dmlkit.data.augment_ops.
        AugmentPolicy`): ``crop_scale``, ``crop_ratio``, ``degrees``, ``translate``,
        ``hflip``, ``vflip``, ``brightness``, ``contrast``, ``saturation``. Off by default.
    kind : {"labels", "pairs", "triplets"}
        ``"labels"``: class-labelled items. ``"pairs"`` / ``"triplets"``: weak supervision
        (see :mod:`dmlkit.training.weak`): tuples from the CSV file ``tuples`` (entries are
        rows of the ``features`` .npy/.npz array, or image paths), else ``num_tuples``
        tuples drawn from the labelled source above, whose labels are then dropped.
        Text (``name: text``, a CSV / TSV / JSONL file at ``path``; ``name: stsb``, the
        STS benchmark): ``"labels"`` for labelled sentences, ``"pairs"`` for sentence
        pairs with scores, ``"triplets"`` for (anchor, positive, negative) sentence
        triplets (see :mod:`dmlkit.data.text`).
    min_score : float, optional
        Text pairs scoring at least this are positives (default 4.0 for STS-B, else 1.0).
    sample_rate, crop_seconds, trim_silence : int, float, bool
        ``name: audio_folder`` (``path/<speaker>/**/*.wav``, :func:`dmlkit.data.audio.
        load_audio_folder`): WAV files are resampled to ``sample_rate``, trimmed of
        silence (energy VAD) and cut into ``crop_seconds`` crops, the items (labelled by
        speaker) of a :class:`~dmlkit.models.SpeakerEncoder`.
    """

    name: str = "digits"
    path: str | None = None
    part: str = "train"
    heldout_part: str | None = None
    x_key: str = "x"
    labels_key: str = "labels"
    image_size: int | list[int] | None = None
    color: str = "auto"
    split: str = "stratified"
    test_fraction: float = 0.5
    train_classes: list[int | str] | None = None
    test_classes: list[int | str] | None = None
    max_per_class: int | None = None
    max_heldout_per_class: int | None = None
    seed: int = 0
    augment_shift: int = 0
    augment_hflip: bool = False
    augment: dict[str, Any] | None = None
    kind: str = "labels"
    tuples: str | None = None
    features: str | None = None
    num_tuples: int = 5000
    min_score: float | None = None
    sample_rate: int = 16_000
    crop_seconds: float = 2.0
    trim_silence: bool = True

    def __post_init__(self) -> None:
        check_fields("data", self)  # types and ranges of the plain fields (field_rules)
        _choice("data", "name", self.name, DATA_SOURCES)
        _choice("data", "split", self.split, ("stratified", "classes"))
        _choice("data", "color", self.color, ("auto", "grayscale", "rgb"))
        _choice("data", "part", self.part, ("train", "test", "all"))
        if self.heldout_part is not None:
            _choice("data", "heldout_part", self.heldout_part, ("train", "test", "all"))
        for key in ("train_classes", "test_classes"):
            setattr(self, key, class_list(key, getattr(self, key)))
        check_class_split(self)  # class lists only a split by classes reads
        if self.split == "classes" and self.train_classes is None:
            raise ValueError("data.split 'classes' needs data.train_classes (a list of class "
                             "ids or names, e.g. [0, 1, 2])")
        size = self.image_size  # a side, or [height, width] (a list: YAML writes lists)
        if isinstance(size, (list, tuple)) and len(size) == 2 and all(
                is_int(v) and v >= 1 for v in size):
            self.image_size = [int(v) for v in size]
        elif size is not None and not (is_int(size) and size >= 1):
            raise ValueError(f"data.image_size must be an integer >= 1 (the side images are "
                             f"resized to) or [height, width], or null; got {size!r}")
        if self.split == "stratified" and not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.name in ("idx", "npz", "image_folder", "text", "audio_folder") and not self.path:
            raise ValueError(f"data.name {self.name!r} needs data.path")
        if self.augment is not None:
            from dmlkit.data.augment_ops import AugmentPolicy

            AugmentPolicy.from_dict(self.augment)  # unknown keys, bad ranges: errors
        _choice("data", "kind", self.kind, ("labels", "pairs", "triplets"))
        if self.kind == "labels" and (self.tuples or self.features):
            raise ValueError("data.tuples / data.features need data.kind 'pairs' or 'triplets'")


@dataclass
class OptimizerConfig:
    """``name`` in adam / adamw / sgd; ``loss_lr`` is the rate of loss parameters (proxies;
    default ``lr``); ``weight_decay`` applies to them too. The ``lr`` of ``train.log`` and
    the history is the model's (first) group's."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    loss_lr: float | None = None

    def __post_init__(self) -> None:
        check_fields("optimizer", self)
        _choice("optimizer", "name", self.name, ("adam", "adamw", "sgd"))


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped every batch: cosine / step / none, linear warmup.

    ``cosine`` decays from ``optimizer.lr`` after the warmup to ``min_lr_ratio`` times it
    one step after the last (the last step's rate is slightly above). ``step``'s
    ``step_size`` epochs count from step 0, not from the warmup's end: warmup and decay
    overlap (:func:`~dmlkit.training.optim.lr_factor`).
    """

    name: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_fields("schedule", self)
        _choice("schedule", "name", self.name, ("cosine", "step", "none"))


@dataclass
class TrainingConfig:
    """Epochs, seed, device, mixed precision, validation and early stopping.

    ``batch_size`` is used when no sampler is configured and for embedding.
    ``val_fraction`` of the training items (stratified) is held back for per-epoch
    validation (MAP@R); ``patience`` epochs without improvement stop training early and
    the best epoch's weights are kept. ``num_threads`` sets torch's intra-op threads for
    the run (small models train fastest on one thread).
    ``val_classes`` holds out whole training classes instead (a fraction of the classes,
    drawn with ``data.seed + 1``, or a list of class ids), so validation, early stopping
    and the kept checkpoint measure generalization to unseen classes
    (:mod:`dmlkit.data.class_folds`); each side keeps at least two classes.
    ``grad_cache_chunk`` embeds each batch in chunks of that many items and recomputes
    their activations in the backward pass (gradient caching): batches larger than fit
    in memory, same gradients.
    ``anchor_weight`` (> 0) adds ``anchor_weight x`` the similarity drift of each batch
    (:func:`dmlkit.functional.anchor.similarity_drift`: the mean squared change of its
    cosine similarities against the model as it was before training) to the loss, so
    training corrects the starting metric (e.g. a pretrained one) instead of replacing
    it with one fitted to the training classes.
    ``uniformity_weight`` (> 0) adds ``uniformity_weight x`` the uniformity of each
    batch's embeddings (:func:`dmlkit.functional.uniformity.uniformity`, Wang & Isola
    2020: low when they spread over the sphere) to the loss, against the collapse of the
    embedding onto the training classes.
    """

    epochs: int = 20
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    val_fraction: float = 0.0
    patience: int | None = None
    grad_clip: float | None = None
    progress: bool = True
    num_threads: int | None = None
    grad_cache_chunk: int | None = None
    val_classes: float | list[int] | None = None
    anchor_weight: float = 0.0
    uniformity_weight: float = 0.0

    def __post_init__(self) -> None:
        check_fields("training", self)  # patience, grad_cache_chunk, ...: field_rules
        check_val_classes(self.val_classes)
        if isinstance(self.val_classes, tuple):  # YAML writes lists
            self.val_classes = list(self.val_classes)
        if self.val_classes is not None and self.val_fraction > 0:
            raise ValueError(
                "training.val_fraction and training.val_classes both set; choose one "
                f"(val_fraction {self.val_fraction}, val_classes {self.val_classes!r})"
            )


@dataclass
class Config:
    """A whole training run; ``name`` names its default output directory."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "triplet_margin"})
    miner: dict[str, Any] | None = None
    sampler: dict[str, Any] | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tune: TuneConfig | None = None  # the search space of `dmlkit tune` (dmlkit.config.tune)
    #: modules (or .py files) imported before the names are resolved: they register the
    #: user's own parts (dmlkit.user_modules); saved with the run, imported when it loads
    imports: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        if raw["tune"] is None:  # configs without a search space stay as they were
            del raw["tune"]
        imports = raw.pop("imports")
        if imports:  # (after the name: what a reader needs first)
            raw = {"name": raw.pop("name"), "imports": list(imports), **raw}
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, folder: str | Path | None = None,
                  source: str = "imports") -> Config:
        """A config from its mapping; the modules under ``imports`` are imported first
        (a module name is looked up on ``sys.path``, then in ``folder``, the config file's,
        then in the working directory; ``source`` names them in errors). A relative
        ``.py`` entry is read from ``folder`` (else the working directory) and recorded
        as that absolute path, so a run saving the config imports it from anywhere."""
        if not isinstance(raw, dict):
            raise TypeError(f"a config must be a mapping, got {type(raw).__name__}")
        _reject_unknown("config", raw, cls)
        from dmlkit.user_modules import (
            absolute_entries,
            check_entries,
            import_modules,
            recorded_entries,
        )

        kwargs: dict[str, Any] = {}
        if "imports" in raw:  # before any name is read: they register the parts it names
            base = Path.cwd() if folder is None else Path(folder)
            kwargs["imports"] = absolute_entries(check_entries(raw["imports"]), base)
            import_modules(kwargs["imports"], folder, source)
            kwargs["imports"] = recorded_entries(kwargs["imports"], folder)
        for f in dataclasses.fields(cls):
            if f.name not in raw or f.name == "imports":
                continue
            value = raw[f.name]
            sub = _SECTIONS.get(f.name)
            if sub is not None:
                kwargs[f.name] = _section(f.name, sub, value)
            elif f.name in _COMPONENTS:
                kwargs[f.name] = _component(f.name, value)
            elif f.name == "tune":
                kwargs[f.name] = None if value is None else TuneConfig.from_dict(value)
            else:  # the run's folder name
                kwargs[f.name] = check_run_name(value)
        config = cls(**kwargs)
        if config.tune is not None:
            _check_space_values(config)
        return config

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> Config:
        """Parse YAML text, or read a config file given as a path: a ``Path``, or a string
        of one line naming an existing file or ending in ``.yaml`` / ``.yml`` (any case).
        A key given twice in a mapping is refused; a file must be UTF-8 (a BOM allowed)."""
        from dmlkit.config.yaml_text import is_file_name, load_config_text, read_config_file

        one_line = isinstance(source, str) and "\n" not in source
        is_path = isinstance(source, Path) or ("\n" not in source and (
            source.strip().lower().endswith((".yaml", ".yml")) or is_file_name(source)))
        if is_path:
            path = Path(source)
            if path.is_dir():  # (a run directory: its config.yaml, when it has one)
                hint = (f": give {path / 'config.yaml'}" if (path / "config.yaml").is_file()
                        else "")
                raise ValueError(f"{path} is a directory; a YAML config file is expected{hint}")
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            source = read_config_file(path)  # (not UTF-8: an error naming the file)
        where = str(path) if is_path else "config text"
        raw = load_config_text(source, where)  # (a key given twice refused)
        if one_line and not is_path and raw is not None and not isinstance(raw, dict):
            raise ValueError(f"{str(source)[:80]!r} is neither a config file (no file of that "
                             "name) nor YAML text of a mapping (settings: `key: value`)")
        if raw is None:
            raise ValueError(f"{where} is empty; write the settings to use (see "
                             "configs/digits.yaml), or run `dmlkit train` without a config "
                             "for the default digits job")
        if not is_path:
            return cls.from_dict(raw)
        imports = isinstance(raw, dict) and "imports" in raw  # (.py files: from its folder)
        beside = {"folder": path.resolve().parent, "source": f"imports: of {path}"}
        try:
            return cls.from_dict(raw, **(beside if imports else {}))
        except ValueError as err:  # (a file of other YAML: name it)
            if str(err).startswith("unknown key"):
                raise ValueError(f"{path}: {err}") from None
            raise

    def check(self) -> None:
        """Resolve component names and parameters against the registries (clear errors),
        and check the sections again (after values were changed in place, e.g. by
        ``--epochs``)."""
        from dmlkit.registry import LOSSES, MINERS, MODELS, SAMPLERS
        from dmlkit.user_modules import absolute_entries, check_entries, import_modules

        self.imports = absolute_entries(check_entries(self.imports), Path.cwd())
        import_modules(self.imports)  # (imported once: a config read from a file has)
        for section in _SECTIONS:
            getattr(self, section).__post_init__()

        for section, registry in (
            ("model", MODELS), ("loss", LOSSES), ("miner", MINERS), ("sampler", SAMPLERS)
        ):  # fmt: skip
            spec = getattr(self, section)
            if spec is None:
                continue
            cls = registry.get(spec["name"])
            if section == "sampler":  # (labels, dataset, model: the trainer's own)
                check_sampler_supplied(spec)
            allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
            unknown = sorted(set(spec) - {"name"} - allowed)
            if unknown:
                raise ValueError(
                    f"unknown key(s) {unknown} in section {section!r} ({section} "
                    f"{spec['name']!r}); allowed: {sorted(allowed)}"
                    + did_you_mean(unknown, allowed)
                )
            check_param_types(section, spec, cls)
        check_parts_for_data(self.data.kind, *(
            None if spec is None else (spec["name"], registry.get(spec["name"]))
            for spec, registry in ((self.sampler, SAMPLERS), (self.miner, MINERS))))
        check_miner_for_loss(self.loss, self.miner)
        check_tuple_file_keys(self.data)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
}
_COMPONENTS = ("model", "loss", "miner", "sampler")


def _choice(section: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{key} must be one of {list(allowed)}, got {value!r}"
                         + did_you_mean(value, allowed))


def _reject_unknown(section: str, raw: dict[str, Any], cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in section {section!r}; allowed: {names}"
                         + did_you_mean(unknown, names))


def _section(name: str, cls: type, value: Any) -> Any:
    if value is None:  # the defaults; but no schedule is what `schedule: null` says
        if cls is DataConfig:  # (a data block emptied to be replaced, not yet filled in)
            warnings.warn(f"'data:' is empty, so the run uses the default data "
                          f"({DataConfig().name!r}); give your own data block (see the README) "
                          "or leave the key out", stacklevel=2)
        return ScheduleConfig(name="none") if cls is ScheduleConfig else cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"section {name!r} must be a mapping, got {value!r}")
    _reject_unknown(name, value, cls)
    defaults = cls()
    kwargs = {k: coerce_scalar(name, k, v, getattr(defaults, k)) for k, v in value.items()}
    return cls(**kwargs)


def _check_space_values(config: Config) -> None:
    """Each choice, ``low`` and ``high`` of a ``tune.space`` path into a section
    (``training.patience``, ``optimizer.loss_lr``): the section built with it, so a value
    no trial could use is an error now, whatever the ``when`` conditions of the space."""
    space = config.tune.space if config.tune is not None else {}
    for path, spec in space.items():
        section, _, key = path.partition(".")
        cls = _SECTIONS.get(section)
        if cls is None or key not in {f.name for f in dataclasses.fields(cls)}:
            continue  # components, unknown keys: found by check_space (dmlkit.tuning)
        current = dataclasses.asdict(getattr(config, section))
        values = ([("choice", v) for v in spec["choices"]] if "choices" in spec
                  else [("low", spec["low"]), ("high", spec["high"])])
        for what, value in values:
            try:
                _section(section, cls, {**current, key: value})
            except (TypeError, ValueError) as err:
                raise ValueError(f"tune.space[{path!r}] {what} {value!r} makes an invalid "
                                 f"config: {err}") from None


def _component(name: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        if name in ("model", "loss"):
            raise ValueError(f"section {name!r} is required")
        return None
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ValueError(f"section {name!r} must be {{name: ..., **params}}, got {value!r}")
    return dict(value)


def load_config(path: str | Path) -> Config:
    """Read and check a YAML config file."""
    config = Config.from_yaml(Path(path))
    config.check()
    return config


__all__ = [
    "Config",
    "DataConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainingConfig",
    "load_config",
    "DATA_SOURCES",
]
