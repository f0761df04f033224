"""Mined indices of the wrong shape are refused with what was given and what is read."""

from __future__ import annotations

import pytest
import torch

from dmlkit.losses import TripletMarginLoss


@pytest.mark.parametrize("make, got", [
    (lambda t: (t, t), "got a 2-tuple"),
    (lambda t: (t, t, t, t, t), "got a 5-tuple"),
    (lambda t: [t, t, t], "got list"),
])
def test_indices_of_another_shape_say_what_they_are(make, got):
    t = torch.arange(2)
    with pytest.raises(TypeError) as info:
        TripletMarginLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), indices=make(t))
    assert got in str(info.value) and "(anchor, positive, negative)" in str(info.value)
