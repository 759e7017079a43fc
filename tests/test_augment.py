"""Batch augmentation: reproducible from the generator alone, bounded, per-sample, no hflip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr.augment import augment_batch
from cxr.config import AugmentConfig, PreprocessConfig
from cxr.data.image_io import decode_image
from cxr.preprocess import preprocess, to_unit

# Every magnitude at zero: the augmentation should then change nothing.
_ALL_OFF = dict(
    rotation_deg=0.0,
    translate=0.0,
    scale_min=1.0,
    brightness=0.0,
    contrast=0.0,
    gamma=0.0,
    noise_std=0.0,
    blur_prob=0.0,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def xray_batch(nih_samples: Path) -> torch.Tensor:
    """Four real X-rays, float (4, 1, 64, 64) in [0, 1]."""
    files = sorted((nih_samples / "images").glob("*.png"))[:4]
    cfg = PreprocessConfig(image_size=64)
    pixels = torch.stack([torch.from_numpy(preprocess(decode_image(f), cfg)) for f in files])
    return to_unit(pixels)


def test_same_seed_gives_the_same_batch(xray_batch):
    cfg = AugmentConfig(strength=1.5, blur_prob=0.5)
    a = augment_batch(xray_batch, cfg, _gen(7))
    b = augment_batch(xray_batch, cfg, _gen(7))
    assert torch.equal(a, b)
    assert a.shape == xray_batch.shape and a.dtype == xray_batch.dtype


def test_different_seeds_give_different_batches(xray_batch):
    a = augment_batch(xray_batch, AugmentConfig(), _gen(0))
    b = augment_batch(xray_batch, AugmentConfig(), _gen(1))
    assert not torch.allclose(a, b)


def test_only_the_given_generator_is_used(xray_batch):
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = augment_batch(xray_batch, AugmentConfig(), _gen(5))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG was not touched
    torch.manual_seed(999)  # a different global state changes nothing
    assert torch.equal(a, augment_batch(xray_batch, AugmentConfig(), _gen(5)))


def test_consecutive_batches_continue_the_generator(xray_batch):
    g = _gen(3)
    first = augment_batch(xray_batch, AugmentConfig(), g)
    second = augment_batch(xray_batch, AugmentConfig(), g)
    assert not torch.allclose(first, second)
    g = _gen(3)
    augment_batch(xray_batch, AugmentConfig(), g)
    assert torch.equal(second, augment_batch(xray_batch, AugmentConfig(), g))  # resume replays


def test_disabled_or_zero_strength_is_identity(xray_batch):
    g = _gen(0)
    state = g.get_state()
    assert augment_batch(xray_batch, AugmentConfig(enabled=False), g) is xray_batch
    assert augment_batch(xray_batch, AugmentConfig(strength=0.0), g) is xray_batch
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("fill", ["zeros", "ones", "random"])
def test_output_stays_in_unit_range_even_at_full_strength(fill):
    shape = (8, 1, 32, 32)
    x = {"zeros": torch.zeros, "ones": torch.ones, "random": torch.rand}[fill](shape)
    cfg = AugmentConfig(strength=3.0, blur_prob=1.0, noise_std=0.2, brightness=0.5)
    out = augment_batch(x, cfg, _gen(0))
    assert out.min() >= 0.0 and out.max() <= 1.0 and torch.isfinite(out).all()


def _left_minus_right(batch: torch.Tensor) -> torch.Tensor:
    half = batch.shape[-1] // 2
    return batch[..., :half].sum(dim=(1, 2, 3)) - batch[..., half:].sum(dim=(1, 2, 3))


def test_no_horizontal_flip_by_default():
    x = torch.zeros(64, 1, 48, 48)
    x[..., 6:42, 4:20] = 0.8  # mass on the left, like a heart on one side
    out = augment_batch(x, AugmentConfig(strength=2.0), _gen(0))
    assert (_left_minus_right(out) > 0).all()
    flipped = augment_batch(x, AugmentConfig(hflip=True), _gen(0))
    share = (_left_minus_right(flipped) < 0).float().mean()
    assert 0.25 < share < 0.75  # about half of the samples flipped


def test_each_sample_gets_its_own_parameters(xray_batch):
    x = xray_batch[:1].repeat(16, 1, 1, 1)
    out = augment_batch(x, AugmentConfig(), _gen(0))
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(16, dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all()


def test_strength_scales_the_change(xray_batch):
    x = xray_batch.repeat(4, 1, 1, 1)
    change = {
        s: (augment_batch(x, AugmentConfig(strength=s), _gen(0)) - x).abs().mean().item()
        for s in (0.25, 1.0, 2.0)
    }
    assert change[0.25] < change[1.0] < change[2.0]


@pytest.mark.parametrize(
    "only",
    [
        dict(rotation_deg=10.0),
        dict(translate=0.1),
        dict(scale_min=0.6),
        dict(brightness=0.2),
        dict(contrast=0.3),
        dict(gamma=0.3),
        dict(noise_std=0.05),
        dict(blur_prob=1.0),
    ],
)
def test_each_component_alone_changes_the_images(xray_batch, only):
    off = AugmentConfig(**_ALL_OFF)
    assert torch.allclose(augment_batch(xray_batch, off, _gen(0)), xray_batch, atol=1e-5)
    out = augment_batch(xray_batch, AugmentConfig(**{**_ALL_OFF, **only}), _gen(0))
    assert (out - xray_batch).abs().mean() > 2e-3


def test_blur_removes_fine_detail(xray_batch):
    cfg = AugmentConfig(**{**_ALL_OFF, "blur_prob": 1.0})
    blurred = augment_batch(xray_batch, cfg, _gen(0))
    detail = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert detail(blurred) < 0.8 * detail(xray_batch)


def test_empty_batch_and_bad_input():
    empty = torch.zeros(0, 1, 16, 16)
    assert augment_batch(empty, AugmentConfig(), _gen(0)).shape == empty.shape
    with pytest.raises(ValueError, match="x must be"):
        augment_batch(torch.zeros(1, 16, 16), AugmentConfig(), _gen(0))
    with pytest.raises(ValueError, match="x must be"):
        augment_batch(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), AugmentConfig(), _gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_generator_drives_a_gpu_batch_reproducibly(xray_batch):
    x = xray_batch.cuda()
    a = augment_batch(x, AugmentConfig(), _gen(4))
    b = augment_batch(x, AugmentConfig(), _gen(4))
    assert a.device == x.device and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
