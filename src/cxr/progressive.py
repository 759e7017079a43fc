"""Progressive resizing: early epochs train on smaller images, the last ones at full size.

A ResNet's cost grows with the square of the side, and the first epochs learn coarse shapes
that small images carry as well (fast.ai's DAWNBench recipe; Touvron et al., "Fixing the
train-test resolution discrepancy", 2019). Images are cached once, at the full size
(preprocess.image_size), and shrunk on the training device per batch, so no second cache and no
second pass of CLAHE are made; validation always runs at the full size, the size the model is
served at.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

SIZE_STEP = 16  # sizes are multiples of this: GPU kernels and a ResNet's /32 stride like them


def epoch_image_size(
    epoch: int, epochs: int, full_size: int, start_size: int | None, fraction: float = 0.5
) -> int:
    """Training image side for `epoch` (1-based) of `epochs`.

    Grows linearly from start_size at epoch 1 to full_size at epoch R + 1, R being `fraction`
    of the epochs (at least 1, and at most epochs - 1 so that the last epoch always trains at
    the size the model is served at); sizes are rounded down to a multiple of SIZE_STEP and never
    fall below start_size. start_size None (or a one-epoch run): full_size always.
    """
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must be in 1..{epochs}, got {epoch}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ramp = min(epochs - 1, max(1, round(fraction * epochs)))
    if start_size is None or start_size >= full_size or epoch > ramp:
        return full_size
    size = start_size + (full_size - start_size) * (epoch - 1) / ramp
    size = int(size) // SIZE_STEP * SIZE_STEP
    return min(full_size, max(start_size, size))


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (N, C, S, S) -> (N, C, size, size), area-averaged (antialiased) on x's device."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
