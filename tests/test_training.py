"""Trainer: determinism, exact resume, weak-supervision batches, schedules, config YAML."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dmlkit.config import Config, DataConfig, TrainingConfig, digits_config
from dmlkit.data import ArrayDataset, split_dataset
from dmlkit.functional import Triplets
from dmlkit.samplers import MPerClassSampler
from dmlkit.training import RandomBatchSampler, Trainer, resolve_config, rng_scope
from dmlkit.training.build import build_sampler
from dmlkit.training.optim import lr_factor


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread (and do not fight over shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(epochs: int = 3, **training) -> Config:
    cfg = Config(
        name="tiny",
        data=DataConfig(name="digits", max_per_class=12, seed=0),
        model={"name": "mlp", "dim": 16, "hidden": [32], "dropout": 0.1},
        loss={"name": "triplet_margin", "margin": 0.2},
        miner={"name": "batch_hard"},
        sampler={"name": "m_per_class", "m": 4, "batch_size": 20},
        training=TrainingConfig(epochs=epochs, progress=False, **training),
    )
    cfg.schedule.warmup_epochs = 1
    return cfg


@pytest.fixture(scope="module")
def tiny_data():
    train, heldout = split_dataset(small_config().data)
    return train, heldout


def make_trainer(cfg, data, out_dir=None, **kw):
    resolved = resolve_config(cfg, data.x[0], int(data.labels.max()) + 1)
    return Trainer(resolved, data, out_dir=out_dir, log=None, **kw)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_seeded_runs_are_identical_and_seeds_differ(tiny_data):
    train, _ = tiny_data
    a, b = make_trainer(small_config(), train), make_trainer(small_config(), train)
    a.fit()
    b.fit()
    c = make_trainer(small_config(seed=1), train)
    c.fit()
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert len(a.history) == 3 and all(np.isfinite(r["loss"]) for r in a.history)


@pytest.mark.parametrize("miner", ["batch_hard", "distance_weighted"])
def test_interrupted_then_resumed_is_bit_identical(tiny_data, tmp_path, miner):
    """Resuming equals not stopping, with a miner that draws from its own generator too."""
    train, _ = tiny_data

    def config(epochs):
        cfg = small_config(epochs=epochs)
        cfg.miner = {"name": miner}
        return cfg

    full = make_trainer(config(epochs=4), train, out_dir=tmp_path / "full")
    full.fit()

    def interrupt(trainer, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    first = make_trainer(config(epochs=4), train, out_dir=out, callbacks=[interrupt])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "rng" in ckpt and "optimizer" in ckpt and "config" in ckpt
    # an unrelated draw between the two processes must not matter
    torch.rand(7)
    second = make_trainer(config(epochs=4), train, out_dir=out)
    second.fit(resume=True)
    wf, ws = weights(full), weights(second)
    assert all(torch.equal(wf[k], ws[k]) for k in wf)
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full.history]
    assert len((out / "train.log").read_text().splitlines()) == 4


def test_resume_with_more_epochs_continues_on_the_longer_schedule(tiny_data, tmp_path):
    """Raising ``epochs`` on resume: the next step's rate is the new cosine schedule's at
    the step reached (not the old schedule's end, 0), and every later step follows it."""
    train, _ = tiny_data
    out = tmp_path / "run"
    make_trainer(small_config(epochs=2), train, out_dir=out).fit()
    longer = small_config(epochs=4)
    trainer = make_trainer(longer, train, out_dir=out)
    seen = []
    trainer.callbacks.append(lambda t, record: seen.append(record["lr"]))
    trainer.fit(resume=True)
    steps = len(trainer.sampler)
    base = longer.optimizer.lr
    want = [base * lr_factor(longer.schedule, e * steps, steps, 4) for e in (2, 3)]
    assert seen == pytest.approx(want, rel=1e-12)
    assert seen[0] > 0


def test_offline_mining_from_config_resumes_exactly(tiny_data, tmp_path):
    """``sampler: {name: offline_hard_negative}`` trains from a config (the trainer hands
    it the data and the model), and resuming between two mining epochs reuses the
    triplets mined before the interruption."""
    train, _ = tiny_data

    def config():
        cfg = small_config(epochs=5)
        cfg.sampler = {"name": "offline_hard_negative", "batch_size": 21, "k": 3, "every": 2,
                       "distance": {"name": "euclidean"}}
        cfg.check()
        return cfg

    full = make_trainer(config(), train, out_dir=tmp_path / "full")
    assert type(full.sampler).__name__ == "OfflineHardNegativeSampler"
    assert full.sampler.model is full.model and full.sampler.dataset is train
    full.fit()

    def interrupt(trainer, record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    first = make_trainer(config(), train, out_dir=out, callbacks=[interrupt])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["sampler"]
    assert saved["mined_epoch"] == 2 and saved["triplets"].shape[1] == 3
    second = make_trainer(config(), train, out_dir=out)
    second.fit(resume=True)
    wf, ws = weights(full), weights(second)
    assert all(torch.equal(wf[k], ws[k]) for k in wf)
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full.history]


def test_nan_loss_keeps_checkpoint(tiny_data, tmp_path):
    train, _ = tiny_data
    trainer = make_trainer(small_config(epochs=3), train, out_dir=tmp_path)
    real = trainer.batch_loss
    calls = {"n": 0}

    def broken(batch):
        calls["n"] += 1
        loss = real(batch)
        return loss * float("nan") if calls["n"] > len(trainer.sampler) else loss

    trainer.batch_loss = broken
    with pytest.raises(FloatingPointError, match="epoch 2"):
        trainer.fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_weak_supervision_batches():
    """Batches of (inputs, None, Triplets) train without labels or a miner."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen)

    class TripletBatches(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return x[i]

    def collate(items):
        inputs = torch.stack(items)
        n = inputs.shape[0]
        a = torch.arange(n - 2)
        return inputs, None, Triplets(a, a + 1, a + 2)

    cfg = small_config(epochs=2)
    cfg.miner = None
    cfg.sampler = None
    cfg.training.batch_size = 10
    cfg.model = {"name": "mlp", "in_features": 6, "dim": 4, "hidden": [8]}
    trainer = Trainer(cfg, TripletBatches(), collate_fn=collate, log=None)
    before = weights(trainer)
    history = trainer.fit()
    assert len(history) == 2 and history[0]["loss"] > 0
    assert not all(torch.equal(before[k], v) for k, v in weights(trainer).items())


def test_validation_and_early_stopping(tiny_data):
    train, _ = tiny_data
    cfg = small_config(epochs=6, patience=1)
    trainer = make_trainer(cfg, train, val_data=train.subset(range(0, len(train), 2)))
    trainer.loss.margin = 0.0  # nothing to learn: val MAP@R cannot keep improving
    history = trainer.fit()
    assert all("val_map_at_r" in r for r in history)
    best = max(r["val_map_at_r"] for r in history)
    assert trainer.best_metric == best and trainer.best_state is not None
    if len(history) < 6:  # stopped early: the last epoch did not improve on the best
        assert history[-1]["val_map_at_r"] <= best


def test_samplers_deterministic_with_set_epoch():
    labels = torch.arange(5).repeat_interleave(8)
    for sampler in (
        RandomBatchSampler(40, 8, seed=3),
        build_sampler(small_config(), labels, 40),
    ):
        sampler.set_epoch(1)
        e1 = list(sampler)
        sampler.set_epoch(2)
        e2 = list(sampler)
        sampler.set_epoch(1)
        assert list(sampler) == e1 and e1 != e2
    built = build_sampler(small_config(), labels, 40)
    assert isinstance(built, MPerClassSampler) and built.seed == 0


def test_lr_schedule():
    cfg = small_config().schedule
    cfg.warmup_epochs = 1
    steps = [lr_factor(cfg, s, steps_per_epoch=4, epochs=3) for s in range(12)]
    assert steps[:4] == [0.25, 0.5, 0.75, 1.0]
    assert steps[-1] < 0.05 and all(a >= b for a, b in zip(steps[3:], steps[4:], strict=False))
    cfg.name, cfg.warmup_epochs, cfg.step_size, cfg.gamma = "step", 0, 1, 0.5
    assert [lr_factor(cfg, s, 2, 3) for s in (0, 2, 5)] == [1.0, 0.5, 0.25]


def test_rng_scope_restores_global_state():
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    with rng_scope(0):
        inside = torch.rand(1)
    with rng_scope(0):
        assert torch.equal(torch.rand(1), inside)
        np.random.rand()
        random.random()
    assert torch.equal(torch.rand(1), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_config_yaml_round_trip(tmp_path):
    cfg = small_config()
    cfg.optimizer.loss_lr = 0.01
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert Config.from_yaml(path) == cfg
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    assert Config.from_yaml("configs/digits.yaml") == digits_config()
    for path in ("fashion_mnist_unseen", "digits_offline_mining", "weak_triplets_digits"):
        Config.from_yaml(f"configs/{path}.yaml").check()
    # YAML 1.1 reads 1e-3 as a string; the schema coerces it
    assert Config.from_yaml("optimizer: {lr: 1e-3}").optimizer.lr == 1e-3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("trainig: {epochs: 2}", "unknown key.*'trainig'"),
        ("training: {epoch: 2}", r"unknown key.*'epoch'.*section 'training'"),
        ("loss: {name: triplet_margin, margn: 0.1}", r"'margn'.*section 'loss'"),
        ("loss: {name: no_such_loss}", "unknown loss 'no_such_loss'"),
        ("optimizer: {name: lbfgs}", "optimizer.name"),
        ("training: {epochs: many}", "training.epochs must be an int"),
    ],
)
def test_config_errors_name_the_key(text, match):
    with pytest.raises(ValueError, match=match):
        Config.from_yaml(text).check()


def test_resolve_fills_shapes_and_proxy_sizes():
    cfg = small_config()
    cfg.model = {"name": "small_cnn", "dim": 8, "width": 4}
    cfg.loss = {"name": "normalized_softmax"}
    cfg.miner = None  # (a classifier loss takes no mined tuples)
    resolved = resolve_config(cfg, torch.zeros(1, 8, 8), num_classes=10)
    assert resolved.model["in_channels"] == 1 and resolved.model["image_size"] == 8
    assert resolved.loss["num_classes"] == 10 and resolved.loss["embedding_size"] == 8
    assert "num_classes" not in cfg.loss  # the input config is not modified
    data = ArrayDataset(torch.rand(20, 1, 8, 8), torch.arange(10).repeat(2))
    trainer = Trainer(resolved, data, log=None)
    n_loss = sum(p.numel() for p in trainer.loss.parameters())
    assert n_loss > 0 and len(trainer.optimizer.param_groups) == 2


def test_trains_on_tuple_dataset():
    """Weakly supervised triplets (no class labels) go through the default sampler."""
    from dmlkit.data import TupleDataset, triplets_from_labels

    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat_interleave(10)
    items = torch.randn(40, 5, generator=gen) + labels[:, None].float()
    ds = TupleDataset(triplets_from_labels(labels, 60, seed=0), items)
    cfg = small_config(epochs=2)
    cfg.miner, cfg.sampler = None, None
    cfg.training.batch_size = 16
    cfg = resolve_config(cfg, ds.example(), num_classes=1)
    trainer = Trainer(cfg, ds, log=None)
    history = trainer.fit()
    assert len(history) == 2 and len(trainer.sampler) == 3 and history[0]["loss"] > 0


def test_mixed_precision_bf16_on_cpu(tiny_data):
    train, _ = tiny_data
    trainer = make_trainer(small_config(epochs=1, amp=True), train)
    assert trainer.amp_dtype == torch.bfloat16
    history = trainer.fit()
    assert np.isfinite(history[0]["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    from dmlkit.training import atomic_save

    path = tmp_path / "ckpt.pt"
    atomic_save({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_run_that_stopped_early_resumes_to_nothing_more(tiny_data, tmp_path):
    train, _ = tiny_data
    cfg = small_config(epochs=30, val_fraction=0.0, patience=1)
    cfg.optimizer.lr = 1e-9  # no gain after the first epoch: stops at epoch 2
    val = train.subset(range(0, len(train), 3))
    first = make_trainer(cfg, train, out_dir=tmp_path, val_data=val)
    history = first.fit()
    assert first.stopped and len(history) < 30
    again = make_trainer(cfg, train, out_dir=tmp_path, val_data=val)
    assert again.fit(resume=True) == history
    torch.testing.assert_close(weights(again), weights(first))


def test_the_logged_rate_is_the_one_the_epoch_trained_with(tiny_data):
    train, _ = tiny_data
    cfg = small_config(epochs=4)
    cfg.schedule.name, cfg.schedule.warmup_epochs = "step", 0
    cfg.schedule.step_size, cfg.schedule.gamma = 2, 0.1
    history = make_trainer(cfg, train).fit()
    lr = cfg.optimizer.lr
    assert [h["lr"] for h in history] == pytest.approx([lr, lr, lr * 0.1, lr * 0.1])


def test_resuming_with_other_settings_is_refused(tiny_data, tmp_path):
    from dmlkit.training import train_run

    cfg = small_config(epochs=1)
    train_run(cfg, tmp_path / "run", log=lambda *a: None)
    longer = small_config(epochs=2)
    train_run(longer, tmp_path / "run", resume=True, log=lambda *a: None)  # epochs may grow
    other = small_config(epochs=3)
    other.data.seed = 7  # another split: held-out items could have been trained on
    with pytest.raises(ValueError, match="data.seed: 0 -> 7"):
        train_run(other, tmp_path / "run", resume=True, log=lambda *a: None)


def test_embed_takes_numpy_rows_and_datasets_refuse_class_names():
    from dmlkit.models import MLPEmbedder
    from dmlkit.training import embed

    rows = np.random.default_rng(0).random((10, 64))
    model = MLPEmbedder(in_features=64, dim=8)
    emb, labels = embed(model, rows)
    torch.testing.assert_close(emb, embed(model, torch.as_tensor(rows, dtype=torch.float32))[0])
    assert labels is None
    with pytest.raises(TypeError, match="map class names to ids"):
        ArrayDataset(rows[:4], ["a", "b", "a", "b"])


def test_one_item_per_class_batches_are_warned_about():
    with pytest.warns(UserWarning, match="m=1"):
        MPerClassSampler(np.repeat(np.arange(5), 4), m=1, batch_size=5)


def test_a_val_fraction_without_two_items_of_any_class_is_refused(tmp_path):
    """One validation item per class scores no query (MAP@R NaN every epoch): refused up
    front instead of early-stopping on nothing and writing -Infinity to metrics.json."""
    from dmlkit.training import train_run

    cfg = small_config(epochs=2, val_fraction=0.01, patience=1)
    with pytest.raises(ValueError, match="val_fraction 0.01 holds out at most one item"):
        train_run(cfg, tmp_path / "run", log=None)
    assert not (tmp_path / "run").exists()


def test_a_classifier_loss_with_a_miner_is_refused_before_training(tiny_data, tmp_path):
    """A loss that takes no mined tuples, configured with a miner, is refused when the
    trainer is built, with the way out, instead of failing at the first batch."""
    train, _ = tiny_data
    cfg = small_config()
    cfg.loss = {"name": "center"}  # (classifier losses such as arcface take them as weights)
    resolved = resolve_config(cfg, train.x[0], int(train.labels.max()) + 1)
    with pytest.raises(ValueError, match=r"loss 'center' .*remove the miner"):
        Trainer(resolved, train, out_dir=tmp_path / "run", log=None)


def test_an_unscorable_validation_epoch_is_neither_best_nor_bad(tiny_data):
    train, _ = tiny_data
    lone = train.subset(list(range(0, len(train), 12))[:3])  # distinct classes, one each
    assert len(set(lone.labels.tolist())) == len(lone)
    trainer = make_trainer(small_config(epochs=3, patience=1), train)
    trainer.val_data = lone
    with pytest.warns(UserWarning):
        trainer.fit()
    assert len(trainer.history) == 3  # no early stop on NaN scores
    assert trainer.best_state is None and trainer.bad_epochs == 0
