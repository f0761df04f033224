"""A sampler's range errors, met while a run is built from its config, name the config
section they come from."""

from __future__ import annotations

import pytest

from dmlkit.config import Config
from dmlkit.training.build import build_sampler


@pytest.mark.parametrize("spec, words", [
    ({"name": "m_per_class", "m": 0, "batch_size": 32}, "m must be >= 1, got 0"),
    ({"name": "m_per_class", "m": 4, "batch_size": 30}, "batch_size (30) must be"),
])
def test_a_sampler_range_error_names_its_section(spec, words):
    import torch

    config = Config.from_dict({"name": "s", "data": {"name": "digits"},
                               "model": {"name": "mlp", "dim": 8},
                               "loss": {"name": "triplet_margin"}, "sampler": spec})
    with pytest.raises(ValueError) as info:
        build_sampler(config, torch.arange(40) % 4, 40)
    assert str(info.value).startswith("sampler 'm_per_class': ")
    assert words in str(info.value)
