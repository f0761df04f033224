"""One rule for each service limit, the 1-way reason and "no epoch was scored"."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from dmlkit.evaluation.few_shot import ONE_WAY_REASON, few_shot_accuracy
from dmlkit.training.best_epoch import scored_best

SETTINGS = dict(port=8000, max_batch=8, max_body_mb=8.0, rate=50.0, burst=10,
                checkpoint_every=100, verify_threshold=None, identify_threshold=None)


@pytest.mark.parametrize("field, value", [("rate", math.nan), ("rate", math.inf),
                                          ("rate", 0.0), ("burst", 0), ("max_batch", 0),
                                          ("verify_threshold", -math.inf),
                                          ("identify_threshold", math.nan)])
def test_the_service_and_the_cli_refuse_the_same_limits(field, value):
    from dmlkit.cli.serve import check_settings
    from dmlkit.service import ServiceConfig

    with pytest.raises(ValueError, match=field):
        ServiceConfig(**{field: value})
    option = "--" + field.replace("_", "-")
    with pytest.raises(ValueError, match=f"^{option} must be"):
        check_settings(**{**SETTINGS, field: value})


@pytest.mark.parametrize("rate, burst, words", [(math.nan, 5, "rate must be > 0"),
                                                (2.0, 0, "burst must be >= 1, got 0")])
def test_a_rate_limiter_names_the_setting_it_refuses(rate, burst, words):
    from dmlkit.service import RateLimiter

    with pytest.raises(ValueError, match=words):
        RateLimiter(rate, burst)


@pytest.mark.parametrize("every", [0, 2.5, True])
def test_the_cli_refuses_the_checkpoint_intervals_the_store_refuses(every):
    from dmlkit.cli.serve import check_settings
    from dmlkit.service.limits import check_checkpoint_every

    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        check_checkpoint_every(every)
    with pytest.raises(ValueError, match="^--checkpoint-every must be >= 1"):
        check_settings(**{**SETTINGS, "checkpoint_every": every})


def test_every_refusal_of_a_1_way_episode_gives_the_same_reason():
    from dmlkit.apps.few_shot import FewShotClassifier
    from dmlkit.cli._fewshot_checks import check_ways

    x, y = np.random.default_rng(0).normal(size=(40, 4)), np.repeat(np.arange(4), 10)
    refusals = []
    for call in (lambda: check_ways("1,5", "1"),
                 lambda: FewShotClassifier().evaluate_episodes(x, y, n_way=1),
                 lambda: few_shot_accuracy(x, y, n_way=1)):
        with pytest.raises(ValueError) as err:
            call()
        refusals.append(str(err.value))
    assert all(msg.endswith(": " + ONE_WAY_REASON) for msg in refusals), refusals


@pytest.mark.parametrize("metric, epoch, expected", [(-math.inf, 0, None),
                                                     (math.nan, 0, None),
                                                     (0.25, 3, (0.25, 3)),
                                                     (0.0, 1, (0.0, 1))])
def test_scored_best_says_whether_an_epoch_was_scored(metric, epoch, expected):
    assert scored_best(SimpleNamespace(best_metric=metric, best_epoch=epoch)) == expected


@pytest.mark.parametrize("field", ["max_batch", "burst", "max_k"])
def test_count_limits_refuse_fractions_instead_of_truncating_them(field):
    from dmlkit.service import RateLimiter, ServiceConfig

    with pytest.raises(ValueError, match=f"{field} must be an integer >= 1, got 2.5"):
        ServiceConfig(**{field: 2.5})
    with pytest.raises(ValueError, match="burst must be an integer >= 1, got 2.5"):
        RateLimiter(1.0, 2.5)
