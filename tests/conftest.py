import os

import pytest
import torch

# keep the suite fast and reproducible on small CI machines
torch.set_num_threads(int(os.environ.get("DMLKIT_TEST_THREADS", "2")))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def unseen_digits_trainer():
    """A builder of a Trainer for a small MLP on digits 0-4 (multi-similarity loss, 8 x 4
    m-per-class batches) with the given ``training`` keys, ready to ``fit()``."""
    from dmlkit.config.schema import Config
    from dmlkit.data.load import split_dataset
    from dmlkit.training import Trainer
    from dmlkit.training.build import resolve_config

    def build(out_dir, **training):
        cfg = Config.from_dict({
            "name": "regularized",
            "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3, 4],
                     "test_classes": [5, 6, 7, 8, 9]},
            "model": {"name": "mlp", "dim": 16, "hidden": [32]},
            "loss": {"name": "multi_similarity"},
            "sampler": {"name": "m_per_class", "m": 8, "batch_size": 32},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 2, "seed": 0, "progress": False, **training},
        })  # fmt: skip
        train, _ = split_dataset(cfg.data)
        return Trainer(resolve_config(cfg, train.x[0], 10), train, out_dir=out_dir, log=None)

    return build
