"""Checks of the few-shot options (``dmlkit fewshot``, ``dmlkit evaluate``), each
refusing a bad value in one line naming its option before any data is read."""

from __future__ import annotations

from typing import Any

# More episodes than this narrow the 95% interval far below any difference worth
# reporting (1.96 * 0.5 / sqrt(1e6) < 0.001) and only cost time and memory.
MAX_EPISODES = 1_000_000


def check_episodes(value: int, option: str) -> int:
    """``value`` if it is a usable number of episodes (1 to :data:`MAX_EPISODES`), else a
    ``ValueError`` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive number of episodes, got {value!r}")
    if value > MAX_EPISODES:
        raise ValueError(f"{option} must be at most {MAX_EPISODES:,} episodes, got {value}: "
                         "more only slow the run without narrowing the 95% interval usefully")
    return value


def check_ways(text: str, shots: str) -> tuple[list[int], list[int]]:
    """``--way`` and ``--shot`` (comma-separated integers) as lists of ints; a value that
    is not an integer, a way below 2 or a shot below 1 is a ``ValueError``."""
    try:
        ways = [int(v) for v in text.split(",")]
        shot_list = [int(v) for v in shots.split(",")]
    except ValueError:
        raise ValueError(f"--way and --shot take integers separated by commas, got "
                         f"{text!r} and {shots!r}") from None
    low = min(ways)
    if low == 1:
        from dmlkit.evaluation.few_shot import ONE_WAY_REASON

        raise ValueError(f"--way must be 2 or more, got {text!r}: {ONE_WAY_REASON}")
    if low < 1:
        raise ValueError(f"--way must be 2 or more, got {text!r}: an N-way episode draws N "
                         f"classes to choose among, and {low} draws none")
    if min(shot_list) < 1:
        raise ValueError(f"--shot must be 1 or more, got {shots!r}: each class of an episode "
                         "needs at least one support item")
    return ways, shot_list


def check_sources(support: str | None, query: str | None, episodes: str | None) -> None:
    """Exactly one of the two few-shot modes: ``--support`` with ``--query``, or
    ``--episodes``; anything else is a ``ValueError``."""
    pair = support is not None or query is not None
    if pair and episodes is None and (support is None or query is None):
        given, missing = ("--support", "--query") if query is None else ("--query", "--support")
        raise ValueError(f"{given} needs {missing} too (or pass --episodes DATA alone)")
    if pair == (episodes is not None):
        raise ValueError("pass --support and --query (classify queries from a support set) "
                         "or --episodes DATA (draw N-way K-shot episodes), not both or neither")


def check_episode_sizes(labels: Any, ways: list[int], shots: list[int], n_query: int,
                        source: str) -> None:
    """Refuse, before any episode runs, a ``--way`` / ``--shot`` / ``--n-query`` setting
    that the labelled set ``source`` cannot fill: every ``N``-way ``K``-shot setting needs
    ``N`` classes with at least ``K + n_query`` items. ``labels`` None (none in the file)
    is refused too."""
    import numpy as np

    if labels is None:
        raise ValueError(f"{source} has no labels")
    if isinstance(n_query, bool) or not isinstance(n_query, int) or n_query < 1:
        raise ValueError(f"--n-query must be 1 or more, got {n_query!r}: each class of an "
                         "episode needs at least one query to classify")
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    for n in ways:
        for k in shots:
            have = int((counts >= k + n_query).sum())
            if have < n:
                raise ValueError(
                    f"{source}: {n}-way episodes need {n} classes with at least "
                    f"{k + n_query} items ({k}-shot: {k} support + {n_query} queries each), "
                    f"but only {have} "
                    f"of its {counts.size} classes have that many; lower --way, --shot or "
                    "--n-query")


def episode_settings(episodes: str | None, ways: str | None, shots: str | None,
                     n_episodes: int | None, n_query: int | None
                     ) -> tuple[str, str, int, int]:
    """``(--way, --shot, --n-episodes, --n-query)`` with their defaults (5; 1,5; 600; 15);
    a ``ValueError`` when one is given without ``--episodes``, where it would do nothing
    (a support set and queries are classified as they are)."""
    given = [name for name, value in (("--way", ways), ("--shot", shots),
                                      ("--n-episodes", n_episodes), ("--n-query", n_query))
             if value is not None]
    if episodes is None and given:
        raise ValueError(f"{', '.join(given)} set the episodes drawn from --episodes; with "
                         "--support and --query (classified as they are) drop "
                         f"{'it' if len(given) == 1 else 'them'}")
    return (ways if ways is not None else "5", shots if shots is not None else "1,5",
            n_episodes if n_episodes is not None else 600,
            n_query if n_query is not None else 15)
