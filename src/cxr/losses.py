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
    eps = cfg.label_smoothing
    if task == "multiclass":
        if name == "ce":
            # class probabilities as targets: one-hot gives the usual CE, mixup/CutMix soft ones
            return lambda logits, y: F.cross_entropy(logits, y.float(), label_smoothing=eps)
        return lambda logits, y: _focal_softmax(logits, y, cfg.focal_gamma, eps)
    if name == "bce":
        return lambda logits, y: _masked_bce(logits, y, None, eps)
    if name == "weighted_bce":
        pos_weight = torch.as_tensor(positive_weights(train_labels))
        return lambda logits, y: _masked_bce(logits, y, pos_weight.to(logits.device), eps)
    return lambda logits, y: _focal_sigmoid(logits, y, cfg.focal_gamma, eps)


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """negatives / positives per finding (1 where a finding has no positives), as float32."""
    known = ~np.isnan(labels)
    pos = np.where(known, labels > 0.5, False).sum(axis=0)
    neg = known.sum(axis=0) - pos
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)


def _mask(y: torch.Tensor, smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, known): unknown labels zeroed (and masked); targets smoothed towards 1/2 as
    each sigmoid output is a two-class problem: 1 -> 1 - eps/2, 0 -> eps/2."""
    known = ~torch.isnan(y)
    target = torch.where(known, y, torch.zeros_like(y))
    return target * (1.0 - smoothing) + 0.5 * smoothing, known.float()


def _masked_bce(
    logits: torch.Tensor, y: torch.Tensor, pos_weight, smoothing: float = 0.0
) -> torch.Tensor:
    target, known = _mask(y, smoothing)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), target, pos_weight=pos_weight, reduction="none"
    )
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def _focal_sigmoid(
    logits: torch.Tensor, y: torch.Tensor, gamma: float, smoothing: float = 0.0
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): down-weights easy examples so rare findings count.

    With smoothing, the cross-entropy is taken against the smoothed target and p_t is the
    probability the model gives the (smoothed) target, p*t + (1-p)*(1-t); without it, as before.
    """
    target, known = _mask(y, smoothing)
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = (1 - p_t) ** gamma * bce
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def _focal_softmax(
    logits: torch.Tensor, y: torch.Tensor, gamma: float, smoothing: float = 0.0
) -> torch.Tensor:
    """Softmax focal loss; with smoothing, the cross-entropy is against y*(1-eps) + eps/K (as
    F.cross_entropy's label_smoothing) and the focal factor uses the true class's probability."""
    log_p = F.log_softmax(logits.float(), dim=1)
    p_t = (log_p * y).sum(dim=1).exp()
    target = y * (1.0 - smoothing) + smoothing / y.shape[1]
    return (-((1 - p_t) ** gamma) * (log_p * target).sum(dim=1)).mean()
