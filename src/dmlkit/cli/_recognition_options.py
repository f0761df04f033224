"""The options of ``dmlkit verify``, ``identify``, ``fewshot`` and ``detect-anomalies``
beyond their data: ``--metric`` with the names and aliases of ``dmlkit evaluate``, and the
checks of their numeric options, each refusing a bad value in one line naming the option
typed (never the library's parameter) before any data is read."""

from __future__ import annotations

from typing import Any

import typer

#: how ``--metric`` is spelled in the help of every command that takes it
METRIC_HELP = "cosine, euclidean (alias l2) or dot (alias ip); any case."


def metric_option(default: str = "cosine") -> Any:
    """The ``--metric`` option, its default ``default``."""
    return typer.Option(default, "--metric", help=METRIC_HELP)


#: how ``--device`` is spelled in the help of the commands whose run's model embeds on
#: the CPU only
DEVICE_HELP = ("Device of the run's model: cpu (it embeds there only; another name is "
               "refused, as dmlkit evaluate refuses one it cannot use).")


def device_option(help: str = DEVICE_HELP) -> Any:
    """The ``--device`` option of a command that embeds with a run's model (default cpu)."""
    return typer.Option("cpu", "--device", help=help)


def cli_device(device: str, cpu_only: str | None = None) -> str:
    """``device`` checked as ``dmlkit evaluate`` checks ``--device``
    (:func:`~dmlkit.training.device.check_device`), as its torch name; a ``ValueError``
    for a name that is no usable device here. ``cpu_only``, when given, names the command
    whose run's model embeds on the CPU only: another device is then refused, never
    silently ignored."""
    from dmlkit.training.device import check_device

    dev = check_device(device, "--device")
    if cpu_only is not None and dev.type != "cpu":
        raise ValueError(f"--device {device}: {cpu_only} embeds with the run's model on the "
                         "CPU only; give --device cpu (or leave it out)")
    return str(dev)


def cli_metric(metric: str, option: str = "--metric") -> str:
    """``metric`` as ``"cosine"``, ``"euclidean"`` or ``"dot"``: the names and aliases
    ``dmlkit evaluate`` takes (:func:`~dmlkit.functional.retrieval.canonical_metric`:
    ``l2`` = euclidean, ``ip`` = dot, any case), else a ``ValueError`` naming ``option``."""
    from dmlkit.functional.retrieval import canonical_metric

    try:
        return canonical_metric(metric)
    except ValueError:
        raise ValueError(f"{option} must be cosine, euclidean (alias l2) or dot (alias ip), "
                         f"got {metric!r}") from None


def check_count(value: int | None, option: str, what: str, low: int = 1) -> None:
    """A ``ValueError`` naming ``option`` unless ``value`` (``None``: not given) is an
    integer of at least ``low``; ``what`` says what it counts."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < low):
        raise ValueError(f"{option} must be {low} or more ({what}), got {value!r}")


def check_rate(value: float | None, option: str, what: str) -> None:
    """A ``ValueError`` naming ``option`` unless ``value`` (``None``: not given) lies
    strictly between 0 and 1; ``what`` says what rate it is."""
    if value is not None and not 0.0 < float(value) < 1.0:  # (NaN fails too)
        raise ValueError(f"{option} must be between 0 and 1, exclusive ({what}), got {value!r}")


def check_verify_options(target_far: float | None, calibration: str, max_pairs: int,
                         bootstrap: int) -> None:
    """The options of ``dmlkit verify`` (the rules of :class:`~dmlkit.apps.Verifier`)."""
    from dmlkit.apps.verifier import CALIBRATIONS

    check_rate(target_far, "--target-far", "the false-accept rate the threshold allows")
    names = [c for c in CALIBRATIONS if c is not None]
    if calibration not in names:
        raise ValueError(f"--calibration must be {' or '.join(names)}, got {calibration!r}")
    check_count(max_pairs, "--max-pairs", "pairs drawn from the labels")
    check_count(bootstrap, "--bootstrap", "replicates of the 95% intervals")


def check_identify_options(mode: str, index: str, nprobe: int | None, ef_search: int | None,
                           target_far: float | None, multi_shot: str | None) -> None:
    """The options of ``dmlkit identify`` (the rules of :class:`~dmlkit.apps.Identifier`);
    ``target_far`` ``None`` under ``--closed-set``."""
    from dmlkit.apps.identifier import MODES

    if mode not in MODES:
        raise ValueError(f"--mode must be {' or '.join(MODES)}, got {mode!r}")
    check_count(nprobe, "--nprobe", "IVF lists searched per query")
    check_count(ef_search, "--ef-search", "the HNSW search breadth")
    if index == "exact" and (nprobe, ef_search) != (None, None):
        raise ValueError("--nprobe / --ef-search apply to faiss indexes (--index IVF..., "
                         "HNSW...), not to the exact index")
    check_rate(target_far, "--target-far", "the false-alarm rate of the threshold that "
               "rejects unknowns")
    if multi_shot not in (None, "mean", "max"):
        raise ValueError(f"--multi-shot must be mean or max, got {multi_shot!r}")


def check_detector_options(contamination: float | None, k: int | None) -> None:
    """The options of ``dmlkit detect-anomalies`` that set a detector to fit (the rules of
    :class:`~dmlkit.apps.MetricOutlierDetector`); ``None``: not given."""
    if contamination is not None and not 0.0 < float(contamination) <= 0.5:
        raise ValueError(f"--contamination must be in (0, 0.5] (the expected fraction of "
                         f"outliers), got {contamination!r}")
    check_count(k, "--k", "neighbours of the knn score")


__all__ = ["DEVICE_HELP", "METRIC_HELP", "check_count", "check_detector_options",
           "check_identify_options", "check_rate", "check_verify_options", "cli_device",
           "cli_metric", "device_option", "metric_option"]
