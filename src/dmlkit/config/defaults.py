"""The default job: a metric for scikit-learn's digits (what ``dmlkit train`` runs bare).

``configs/digits.yaml`` holds the same config, for reading and editing.
"""

from __future__ import annotations

from dmlkit.config.schema import (
    Config,
    DataConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainingConfig,
)


def digits_config() -> Config:
    """All ten digit classes, a seeded 50/50 stratified split of the samples; a small CNN
    trained with a batch-hard triplet loss on class-balanced batches."""
    return Config(
        name="digits",
        data=DataConfig(name="digits", split="stratified", test_fraction=0.5, seed=0),
        model={"name": "small_cnn", "in_channels": 1, "image_size": 8, "dim": 64, "width": 32},
        loss={"name": "triplet_margin", "margin": 0.2},
        miner={"name": "batch_hard"},
        sampler={"name": "m_per_class", "m": 8, "batch_size": 80},
        optimizer=OptimizerConfig(name="adam", lr=3e-3),
        schedule=ScheduleConfig(name="cosine"),
        training=TrainingConfig(epochs=30, seed=0, num_threads=1),
    )


__all__ = ["digits_config"]
