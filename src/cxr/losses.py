"""Losses for both tasks, chosen by name. Unknown labels (NaN) are masked out, not counted as 0."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxr.config import TrainConfig
from cxr.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MULTILABEL_LOSSES = ("bce", "weighted_bce", "focal")
MULTICLASS_LOSSES = ("ce", "focal")


def build_loss(cfg: TrainConfig, task: str, train_labels: np.ndarray) -> LossFn:
    """Loss for `task`; weighted BCE weighs positives by negatives/positives on the train split."""
    name = cfg.loss
    if name == "auto":
        name = "bce" if task == "multilabel" else "ce"
    allowed = MULTILABEL_LOSSES if task == "multilabel" else MULTICLASS_LOSSES
    if name not in allowed:
        raise ConfigError(f"train.loss: {name!r} does not fit a {task} task (use one of {allowed})")
    if task == "multiclass":
        if name == "ce":
            # class probabilities as targets: one-hot gives the usual CE, mixup/CutMix soft ones
            return lambda logits, y: F.cross_entropy(
                logits, y.float(), label_smoothing=cfg.label_smoothing
            )
        return lambda logits, y: _focal_softmax(logits, y, cfg.focal_gamma)
    if name == "bce":
        return lambda logits, y: _masked_bce(logits, y, None)
    if name == "weighted_bce":
        pos_weight = torch.as_tensor(positive_weights(train_labels))
        return lambda logits, y: _masked_bce(logits, y, pos_weight.to(logits.device))
    return lambda logits, y: _focal_sigmoid(logits, y, cfg.focal_gamma)


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """negatives / positives per finding (1 where a finding has no positives), as float32."""
    known = ~np.isnan(labels)
    pos = np.where(known, labels > 0.5, False).sum(axis=0)
    neg = known.sum(axis=0) - pos
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)


def _mask(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    known = ~torch.isnan(y)
    return torch.where(known, y, torch.zeros_like(y)), known.float()


def _masked_bce(logits: torch.Tensor, y: torch.Tensor, pos_weight) -> torch.Tensor:
    target, known = _mask(y)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), target, pos_weight=pos_weight, reduction="none"
    )
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def _focal_sigmoid(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): down-weights easy examples so rare findings count."""
    target, known = _mask(y)
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    loss = (1 - p_t) ** gamma * bce
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def _focal_softmax(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_t = (log_p * y).sum(dim=1)
    return (-((1 - log_p_t.exp()) ** gamma) * log_p_t).mean()
