"""Inputs checked against an index's recorded inputs (``dmlkit search`` of an index built
with ``--data``) name them as the index's, not as the run's training inputs."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.runs.queries import InputSpec, check_input_range, check_input_shape, input_spec


def _indexed(data: str = "new40.npz") -> InputSpec:
    """The spec an index built with ``--data data`` records, as search reads it."""
    recorded = InputSpec((1, 40, 40), "float32", 0.0, 1.0, True).to_dict()
    return InputSpec.from_info({**recorded, "data": data})


def test_a_misfit_query_names_the_index_inputs():
    with pytest.raises(ValueError) as info:
        check_input_shape((2, 5, 5), _indexed(), "q5.npz")
    message = str(info.value)
    assert "but the index was built from inputs of shape 1x40x40" in message
    assert "trained" not in message


def test_an_out_of_range_query_names_the_index_inputs():
    with pytest.warns(UserWarning, match=r"but the index was built from inputs in \[0, 1\]"):
        check_input_range(np.full((1, 1, 40, 40), 16.0), _indexed(), "q.npz", "query inputs")


@pytest.mark.parametrize("data", ["heldout", "train", None])
def test_an_index_of_the_runs_own_split_keeps_the_training_wording(data):
    spec = (_indexed(data) if data is not None else InputSpec.from_info(
        InputSpec((1, 40, 40), "float32", 0.0, 1.0, True).to_dict()))  # (older index)
    with pytest.raises(ValueError, match="but the run was trained on inputs of shape 1x40x40"):
        check_input_shape((2, 5, 5), spec, "q5.npz")


def test_the_training_inputs_keep_their_wording():
    spec = input_spec(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="but the run was trained on inputs of shape 1x8x8"):
        check_input_shape((1, 9, 9), spec, "q.npz")
    assert InputSpec.from_info(spec.to_dict()) == spec  # (the origin is not compared)
    assert "origin" not in spec.to_dict()
