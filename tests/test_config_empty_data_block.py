"""An emptied ``data:`` block (YAML null) says that the run falls back to the default data."""

import warnings

import pytest

from dmlkit.config import Config


def test_an_empty_data_block_warns_that_the_default_data_is_used():
    with pytest.warns(UserWarning, match=r"'data:' is empty, so the run uses the default data"):
        config = Config.from_dict({"name": "x", "data": None})
    assert config.data.name == "digits"


def test_a_left_out_or_given_data_block_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Config.from_dict({"name": "x"}).data.name == "digits"
        assert Config.from_dict({"name": "x", "data": {"name": "digits"}}).data.name == "digits"
        assert Config.from_dict({"name": "x", "schedule": None}).schedule.name == "none"
