"""Refusals that say what is wrong: a file of junk bytes loaded as a checkpoint, and
multi-labels given to a classical learner."""

import numpy as np
import pytest

from dmlkit.classical.frozen import check_one_label_per_row
from dmlkit.training.checkpoint import load_checkpoint, torch_reason


def test_junk_bytes_are_named_not_a_pytorch_file(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"junk!")
    with pytest.raises(ValueError, match=r"not a PyTorch file \(KeyError \d+ in its unpickler\)"):
        load_checkpoint(junk)
    assert torch_reason(KeyError("model")) == "'model'"  # a named key stays as it is


def test_multi_labels_for_a_classical_learner_point_to_pair_losses():
    with pytest.raises(ValueError) as err:
        check_one_label_per_row(np.eye(4, dtype=bool), "data.npz")
    text = str(err.value)
    assert "(n, C) multi-labels" in text and "multi_similarity" in text
    assert "labels[:, k]" not in text
    with pytest.raises(ValueError, match=r"labels\[:, k\]"):
        check_one_label_per_row(np.zeros((4, 2), dtype=np.int64), "data.npz")
