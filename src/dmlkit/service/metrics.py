"""Request counts and latencies of the service per route and status (Prometheus text)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """Request counts and latencies per route and status, in Prometheus text format."""

    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)  # route -> bucket counts+sum
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.counts[(route, status)] = self.counts.get((route, status), 0) + 1
            row = self.latency.setdefault(route, [0.0] * (len(self.buckets) + 2))
            for i, edge in enumerate(self.buckets):
                if seconds <= edge:
                    row[i] += 1
            row[-2] += 1  # count (+Inf bucket)
            row[-1] += seconds

    def text(self, items: int) -> str:
        lines = ["# TYPE dmlkit_requests_total counter"]
        with self.lock:
            for (route, status), n in sorted(self.counts.items()):
                lines.append(f'dmlkit_requests_total{{route="{route}",status="{status}"}} {n}')
            lines.append("# TYPE dmlkit_request_seconds histogram")
            for route, row in sorted(self.latency.items()):
                for edge, n in zip(self.buckets, row, strict=False):
                    lines.append(f'dmlkit_request_seconds_bucket{{route="{route}",le="{edge}"}} '
                                 f"{int(n)}")
                lines.append(f'dmlkit_request_seconds_bucket{{route="{route}",le="+Inf"}} '
                             f"{int(row[-2])}")
                lines.append(f'dmlkit_request_seconds_count{{route="{route}"}} {int(row[-2])}')
                lines.append(f'dmlkit_request_seconds_sum{{route="{route}"}} {row[-1]:.6f}')
        lines += ["# TYPE dmlkit_index_items gauge", f"dmlkit_index_items {items}"]
        return "\n".join(lines) + "\n"


__all__ = ["Metrics"]
