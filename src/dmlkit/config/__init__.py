"""Configuration schema of training runs (dataclasses <-> YAML)."""

from dmlkit.config.defaults import digits_config
from dmlkit.config.schema import (
    DATA_SOURCES,
    Config,
    DataConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainingConfig,
    load_config,
)

__all__ = [
    "Config",
    "DataConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainingConfig",
    "load_config",
    "digits_config",
    "DATA_SOURCES",
]
