"""The name of a study, and the folder it names by default (``runs/<study>-tune``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmlkit.config.run_name import check_run_name

if TYPE_CHECKING:
    from dmlkit.config.schema import Config


def check_study_name(value: Any, option: str = "study_name") -> str:
    """``value`` as a study name given as ``option`` (``--study``): one plain folder
    name, as a config's ``name`` is (:func:`~dmlkit.config.run_name.check_run_name`),
    since it names the default study folder ``runs/<study>-tune``; a ``ValueError``
    naming ``option`` otherwise (empty, ``.``, ``..``, or holding ``/`` or ``\\``)."""
    try:
        return check_run_name(value)
    except ValueError:
        raise ValueError(
            f"{option} {value!r} is not a study name: it names the study's default folder "
            "runs/<study>-tune, so it must be one folder name; use letters, digits, '-', "
            "'_' or '.', without '/' (to place the study's files elsewhere, pass --out)"
        ) from None


def study_name_of(config: Config, study_name: str | None = None) -> str:
    """The study a worker joins: ``study_name`` (checked by :func:`check_study_name`),
    else ``tune.study_name``, else the config's ``name``."""
    if study_name is not None:
        return check_study_name(study_name)
    return (config.tune.study_name if config.tune is not None else None) or config.name


def default_out_dir(config: Config, study_name: str | None = None,
                    runs_dir: Path = Path("runs")) -> Path:
    """``runs/<name>-tune`` for the config's own study (``name`` the config's), else
    ``runs/<study>-tune``: one folder of best files per study."""
    study = study_name_of(config, study_name)
    return runs_dir / f"{config.name if study == study_name_of(config) else study}-tune"


__all__ = ["check_study_name", "default_out_dir", "study_name_of"]
