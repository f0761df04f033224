import os

import pytest
import torch

# keep the suite fast and reproducible on small CI machines
torch.set_num_threads(int(os.environ.get("DMLKIT_TEST_THREADS", "2")))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
