"""One seed range for every path: the config check refuses seeds torch cannot take, so
``dmlkit tune`` and ``crossval`` refuse them before any trial, as ``train`` does."""

from __future__ import annotations

import pytest

from dmlkit.config import Config
from dmlkit.config.field_rules import MAX_SEED


@pytest.mark.parametrize("section", ["training", "data"])
def test_the_config_check_refuses_seeds_beyond_the_range(section):
    ok = Config.from_dict({"name": "s", "data": {"name": "digits"}, section: {"seed": MAX_SEED}})
    ok.check()
    refused = rf"{section}.seed must be an integer in \[0, {MAX_SEED}\]"
    with pytest.raises(ValueError, match=refused):
        Config.from_dict({"name": "s", "data": {"name": "digits"},
                          section: {"seed": 2**64 - 1}}).check()
