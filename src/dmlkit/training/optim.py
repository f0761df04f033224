"""Optimizer over model and loss parameters, and the per-batch learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from dmlkit.config.schema import OptimizerConfig, ScheduleConfig


def build_optimizer(
    config: OptimizerConfig, model: nn.Module, loss: nn.Module
) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the model's parameters and the loss's (proxies, class weights).

    Loss parameters form a second group with learning rate ``loss_lr`` (default ``lr``)
    and the same ``weight_decay`` as the model's; the schedule scales both.
    A model with ``param_groups(lr)`` (pretrained backbones) gives its own groups.
    """
    param_groups = getattr(model, "param_groups", None)  # e.g. a lower backbone rate
    if callable(param_groups):
        groups = param_groups(config.lr)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": config.loss_lr or config.lr})
    groups = [g for g in groups if g["params"]]
    if not groups:  # nothing trains (e.g. head_type: none): a stand-in keeps the API whole
        groups = [{"params": [nn.Parameter(torch.zeros(()))], "lr": config.lr}]
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer {config.name!r}; known: adam, adamw, sgd")


def lr_factor(config: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate at (0-based) batch ``step``.

    Linear warmup over ``warmup_epochs`` (``(step + 1) / warmup_steps``), then

    - ``cosine``: cosine decay from 1 over the ``total - warmup_steps`` steps left, to
      ``min_lr_ratio`` one step after the last (as torch's ``CosineAnnealingLR`` with
      ``T_max`` the decay steps): the last step's factor is slightly above it;
    - ``step``: a factor ``gamma`` every ``step_size`` epochs, counted from step 0, not
      from the warmup's end: warmup and decay overlap (a warmup of ``step_size`` epochs
      or more ends on an already decayed rate);
    - ``none``: constant.
    """
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
    if config.name == "step":
        return config.gamma ** (step // (config.step_size * steps_per_epoch))
    return 1.0


def restore_rates(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set the rates of ``scheduler``'s optimizer (a resume loaded both) to the schedule as
    configured now at the step reached: the same values as saved when the epochs are
    unchanged; on the new curve when ``training.epochs`` was raised (the saved rates are
    the old schedule's end, 0 for cosine)."""
    step = scheduler.last_epoch
    rates = [base * fn(step) for fn, base in zip(scheduler.lr_lambdas, scheduler.base_lrs,
                                                 strict=True)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = list(rates)


def check_warmup(config: ScheduleConfig, epochs: int) -> None:
    """Warn when the warmup lasts the whole run (or longer): the learning rate never
    reaches ``optimizer.lr``, and no decay follows (a short smoke run of a config with a
    warmup still trains)."""
    if config.warmup_epochs > 0 and config.warmup_epochs >= epochs:
        import warnings

        warnings.warn(
            f"schedule.warmup_epochs ({config.warmup_epochs:g}) is not below "
            f"training.epochs ({epochs}): the learning rate never reaches optimizer.lr; "
            "shorten the warmup or train longer", UserWarning, stacklevel=3)


def build_scheduler(
    config: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`, to be stepped after every batch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch, epochs)
    )


__all__ = ["build_optimizer", "build_scheduler", "check_warmup", "lr_factor", "restore_rates"]
