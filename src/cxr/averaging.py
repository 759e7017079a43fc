"""Weight averaging during training: an exponential moving average (EMA) and SWA.

Both are torch.optim.swa_utils.AveragedModel, so the averaging rules are PyTorch's:

- EMA (`train.ema_decay` > 0): after every optimiser step, avg = decay * avg + (1 - decay) * w,
  buffers (BatchNorm statistics) included. Validation, best-epoch choice and the saved weights
  use the averaged model: it is smoother than the last step's weights and usually generalises
  a little better (Polyak averaging; timm's ModelEmaV2).
- SWA (`train.swa_epochs` = N > 0, Izmailov et al. 2018): the weights at the end of each of the
  last N epochs are averaged with equal weight (optionally at a constant `train.swa_lr` in those
  epochs); BatchNorm statistics are then recomputed on the training images (`update_bn`), as the
  average of weights is not the average of their statistics. The SWA model is the run's final
  model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from cxr.config import TrainConfig
from cxr.data.cache import CachedImages
from cxr.preprocess import MEAN, STD, normalize
from cxr.runtime import Runtime, batches, to_model

__all__ = ["WeightAverages"]


class WeightAverages:
    """The EMA and SWA copies of one model (either may be off), stepped by the training loop."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.cfg = cfg
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay > 0
            else None
        )
        self.swa = AveragedModel(model) if cfg.swa_epochs > 0 else None
        self.first_swa_epoch = max(1, cfg.epochs - cfg.swa_epochs + 1)

    def in_swa(self, epoch: int) -> bool:
        return self.swa is not None and epoch >= self.first_swa_epoch

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """After each optimiser (and scheduler) step: update the EMA; hold SWA's learning rate."""
        if self.ema is not None:
            self.ema.update_parameters(model)
        if self.in_swa(epoch) and self.cfg.swa_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = self.cfg.swa_lr

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.in_swa(epoch):
            self.swa.update_parameters(model)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The model validation scores and the run saves: the EMA's when on, else `model`."""
        return self.ema.module if self.ema is not None else model

    def swa_model(
        self, train_images: CachedImages, rt: Runtime, batch_size: int
    ) -> nn.Module | None:
        """The SWA average with BatchNorm statistics of the training images; None if SWA is off
        or no epoch was averaged (training stopped early, before the SWA epochs)."""
        if self.swa is None or int(self.swa.n_averaged) == 0:
            return None

        # A cxr Classifier carries its input scale; any other module gets cxr's default one.
        module = self.swa.module
        mean, std = getattr(module, "input_mean", MEAN), getattr(module, "input_std", STD)

        def inputs() -> Iterator[torch.Tensor]:
            for x, _ in batches(train_images, batch_size, None):
                yield normalize(to_model(x, rt), mean, std)

        update_bn(inputs(), self.swa, device=rt.device)
        return self.swa.module

    def state_dict(self) -> dict:
        out = {}
        if self.ema is not None:
            out["ema"] = self.ema.state_dict()
        if self.swa is not None:
            out["swa"] = self.swa.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        for name in ("ema", "swa"):
            averaged = getattr(self, name)
            if averaged is not None and name in state:
                averaged.load_state_dict(state[name])

    def describe(self) -> str | None:
        """What model.json records about the saved weights (None: plain best-epoch weights)."""
        parts = []
        if self.ema is not None:
            parts.append(f"EMA of the weights (decay {self.cfg.ema_decay})")
        if self.swa is not None:
            parts.append(
                f"SWA over epochs {self.first_swa_epoch}-{self.cfg.epochs}"
                + (f" at lr {self.cfg.swa_lr}" if self.cfg.swa_lr else "")
            )
        return "; ".join(parts) or None
