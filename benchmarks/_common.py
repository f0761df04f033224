"""Helpers shared by the benchmark scripts: peak-memory probes, tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _status_kb(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``VmSize``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    return _status_kb("VmRSS") / 1024.0


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS counter (VmHWM, ru_maxrss) to the current RSS.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). Returns the current RSS
    in MB, the baseline against which :func:`peak_rss_mb` is read.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def peak_rss_mb() -> float:
    """Peak RSS since start or since the last :func:`reset_peak_rss`, MB (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cap_address_space(extra_gb: float) -> float:
    """Limit this process's address space to its current size plus ``extra_gb``.

    Allocations beyond it fail with an allocation error instead of exhausting the
    machine. Returns the limit in GB.
    """
    limit = _status_kb("VmSize") * 1024 + int(extra_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit / (1 << 30)


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
    }


def format_table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def run_main(main: Any) -> None:
    """Run a benchmark's ``main()``; data or a package it needs and cannot find (an error
    whose message says what to install) is one line on stderr and exit status 2, not a
    traceback. Any other error keeps its traceback."""
    import sys

    try:
        status = main()
    except (ImportError, FileNotFoundError) as err:
        if "pip install" not in str(err) and "apt-get install" not in str(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)
