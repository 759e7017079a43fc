"""Optimizers and learning-rate schedules by name: small registries instead of if/elif chains."""

from __future__ import annotations

import math

import torch
from torch import nn

from cxr.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases: decaying them only fights the normalisation.
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    factories = {
        "sgd": lambda: torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        ),
        "adam": lambda: torch.optim.Adam(groups, lr=cfg.lr),
        "adamw": lambda: torch.optim.AdamW(groups, lr=cfg.lr),
    }
    return factories[cfg.optimizer]()


class Schedule:
    """One object for every schedule: `after_step()` per batch, `after_epoch(metric)` per epoch.

    Per-step schedules (cosine with warm-up, one-cycle, step) are LambdaLR/OneCycleLR stepped
    every batch; plateau is stepped once per epoch on validation AUROC.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        total = max(1, cfg.epochs * steps_per_epoch)
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        self.per_step = cfg.scheduler != "plateau"
        lambdas = {
            "cosine": lambda s: _warmup_cosine(s, warmup, total),
            "step": lambda s: cfg.step_gamma ** ((s // steps_per_epoch) // cfg.step_size),
            "none": lambda s: 1.0,
        }
        if cfg.scheduler == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.lr, total_steps=total
            )
        elif cfg.scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.3, patience=1
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas[cfg.scheduler])

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, metric: float) -> None:
        if not self.per_step:
            self.scheduler.step(metric)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
