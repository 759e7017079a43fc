"""Training-only augmentation of a whole batch, in torch, on the training device.

Per-image augmentation in DataLoader workers would compete with the model for a 2-core CPU;
a batch of (N, 1, S, S) tensors goes through one affine warp, a few elementwise ops and one
grouped convolution instead, which costs a small fraction of a forward/backward pass.

Every random number comes from the `generator` argument (never the global RNG), so resuming a
run with the saved generator state replays exactly the same augmentations. The number of draws
per batch does not depend on the config, so changing one magnitude does not reshuffle the rest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cxr.config import AugmentConfig

_ASPECT_JITTER = 0.1  # random-resized-crop aspect ratio within exp(+-0.1), about +-10%
_BLUR_SIGMA = (0.5, 1.0)  # pixels, before strength; "a small Gaussian kernel"
_MIN_AREA = 0.1  # strength 3 must not zoom into a sliver

# Columns of the per-sample uniform draws.
_ANGLE, _AREA, _ASPECT, _SHIFT_X, _SHIFT_Y, _FLIP = range(6)
_BRIGHT, _CONTRAST, _GAMMA, _NOISE, _BLUR_GATE, _BLUR_SIGMA_U = range(6, 12)
_N_DRAWS = 12


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment float (N, 1, S, S) images in [0, 1]; returns the same shape, in [0, 1].

    Per sample: one affine (rotation within +-rotation_deg, a random-resized crop of area in
    [scale_min, 1] with mild aspect jitter, translation within +-translate of the side, and a
    horizontal flip with probability 1/2 only when cfg.hflip), then gamma, contrast and
    brightness jitter, a small Gaussian blur with probability blur_prob, and Gaussian noise.
    cfg.strength scales every magnitude (the blur's sigma, not its probability); with
    cfg.enabled False or strength 0, x is returned unchanged. Parameters are drawn on the
    generator's device and moved to x's.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor (N, C, S, S) in [0, 1], got {shape}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not cfg.enabled or x.shape[0] == 0:
        return x
    cfg = cfg.resolved()
    if cfg.strength == 0:
        return _erase(x, cfg, generator) if cfg.erase_prob > 0 else x

    n = x.shape[0]
    u = torch.rand((n, _N_DRAWS), generator=generator, device=generator.device)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if x.is_cuda and not u.is_cuda:  # pinned + non-blocking: a pageable copy waits for the GPU
        u = u.pin_memory().to(x.device, non_blocking=True)
    u = u.to(device=x.device, dtype=torch.float32)

    out = _affine(x, u, cfg)
    out = _intensity(out, u, cfg)
    out = _blur(out, u, cfg)
    sigma = u[:, _NOISE] * (cfg.noise_std * cfg.strength)
    if cfg.noise_std > 0:
        noise_gen = torch.Generator(device=x.device).manual_seed(noise_seed)
        noise = torch.randn(out.shape, generator=noise_gen, device=x.device, dtype=out.dtype)
        out = out + noise * sigma.to(out.dtype)[:, None, None, None]
    out = out.clamp_(0.0, 1.0)
    return _erase(out, cfg, generator) if cfg.erase_prob > 0 else out


def _erase(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability erase_prob per image, one rectangle
    of area erase_area (as a share of the image, aspect within 1/3..3) is filled with uniform
    noise, so the model cannot lean on any one region (a marker, a text label, one lung).

    Drawn after the other augmentations, only when erasing is on: turning it on does not change
    the rest of the batch's draws.
    """
    n, _, h, w = x.shape
    u = torch.rand((n, 5), generator=generator, device=generator.device).to(x.device)
    lo, hi = cfg.erase_area
    area = (lo + (hi - lo) * u[:, 1]) * h * w
    aspect = torch.exp((u[:, 2] * 2 - 1) * math.log(3.0))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (u[:, 3] * (h - eh + 1).float()).long()
    left = (u[:, 4] * (w - ew + 1).float()).long()
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    box = (
        (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
        & (u[:, 0] < cfg.erase_prob)[:, None, None]
    )[:, None]
    fill = torch.rand(x.shape, generator=generator, device=generator.device).to(x)
    return torch.where(box, fill, x)


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a shuffled copy.

    x (N, C, S, S) float, y (N, K) labels (one-hot or multi-hot; NaN = unknown stays unknown).
    One weight lam ~ Beta(alpha, alpha) per batch: mixup blends whole images, CutMix pastes a
    box of area 1 - lam from the partner; labels become lam * y + (1 - lam) * y[partner], soft
    targets that every loss takes. With both alphas set, each mixed batch is one or the other
    with probability 1/2 (timm's rule). Returns (x, y) unchanged when both are off.

    Exactly one number is drawn from `generator` per call, whatever the config and batch size:
    under torchrun ranks with different row counts stay in step, and resume replays exactly.
    """
    if cfg.mixup_alpha == 0 and cfg.cutmix_alpha == 0:
        return x, y
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if not cfg.enabled or len(x) < 2:
        return x, y
    rng = np.random.default_rng(seed)
    if rng.random() >= cfg.mix_prob:
        return x, y
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha == 0 or rng.random() < 0.5)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(round(h * cut)), int(round(w * cut))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        t, b = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        left, r = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        x = x.clone()
        x[..., t:b, left:r] = x[partner][..., t:b, left:r]
        lam = 1.0 - (b - t) * (r - left) / (h * w)  # the box as clipped at the border
    else:
        x = lam * x + (1.0 - lam) * x[partner]
    y = y.to(torch.float32)
    return x, lam * y + (1.0 - lam) * y[partner.to(y.device)]


def _sym(column: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) -> uniform [-1, 1)."""
    return column * 2 - 1


def _affine(x: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    s = cfg.strength
    angle = _sym(u[:, _ANGLE]) * math.radians(cfg.rotation_deg * s)
    min_area = max(1.0 - (1.0 - cfg.scale_min) * s, _MIN_AREA)
    area = min_area + (1.0 - min_area) * u[:, _AREA]
    # Aspect jitter only as far as the window still fits inside the image (area <= aspect <=
    # 1 / area): no crop (area 1), no squeeze.
    log_aspect = _sym(u[:, _ASPECT]) * torch.clamp(-torch.log(area), max=_ASPECT_JITTER * s)
    # Half-sizes of the sampled window in normalised [-1, 1] coordinates (1 = the whole image).
    width = torch.sqrt(area * torch.exp(log_aspect)).clamp(max=1.0)
    height = torch.sqrt(area * torch.exp(-log_aspect)).clamp(max=1.0)
    # The crop may sit anywhere inside the image, then the translation moves it further
    # (+-translate of the side = +-2 * translate in normalised units).
    shift_x = _sym(u[:, _SHIFT_X]) * ((1.0 - width) + 2 * cfg.translate * s)
    shift_y = _sym(u[:, _SHIFT_Y]) * ((1.0 - height) + 2 * cfg.translate * s)
    flip = torch.where(u[:, _FLIP] < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones_like(width)

    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * width * flip, -sin * height, shift_x], dim=1),
            torch.stack([sin * width * flip, cos * height, shift_y], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Zeros outside: black, like the bars of pad-mode preprocessing.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _intensity(x: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    s = cfg.strength
    view = (-1, 1, 1, 1)
    gamma = torch.exp(_sym(u[:, _GAMMA]) * (cfg.gamma * s)).to(x.dtype).view(view)
    contrast = (1.0 + _sym(u[:, _CONTRAST]) * (cfg.contrast * s)).clamp(min=0.0)
    brightness = _sym(u[:, _BRIGHT]) * (cfg.brightness * s)
    x = x.clamp(0.0, 1.0).pow(gamma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast.to(x.dtype).view(view) + mean + brightness.to(x.dtype).view(view)


def _blur(x: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Separable Gaussian blur on the samples whose gate fired; a delta kernel for the rest."""
    if cfg.blur_prob == 0:
        return x
    n, c, h, w = x.shape
    lo, hi = _BLUR_SIGMA
    sigma = (lo + (hi - lo) * u[:, _BLUR_SIGMA_U]) * cfg.strength
    blurred = u[:, _BLUR_GATE] < cfg.blur_prob
    radius = min(max(1, math.ceil(3 * hi * cfg.strength)), (min(h, w) - 1) // 2)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    delta = (offsets == 0).to(torch.float32).expand_as(kernel)
    kernel = torch.where(blurred[:, None], kernel / kernel.sum(dim=1, keepdim=True), delta)
    kernel = kernel.to(x.dtype).repeat_interleave(c, dim=0)  # one kernel per (sample, channel)

    # Samples (and channels) as groups of a single grouped convolution: no loop over samples.
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)
