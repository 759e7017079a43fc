"""The one preprocessing path: shapes, resize modes, CLAHE, filters, geometry, tensor helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxr.config import PreprocessConfig
from cxr.data.image_io import decode_image
from cxr.errors import ConfigError
from cxr.preprocess import (
    MEAN,
    STD,
    clahe,
    heatmap_to_original,
    model_input,
    normalize,
    preprocess,
    preprocess_with_geometry,
    to_unit,
)

FILTERS = ["none", "median", "gaussian", "bilateral", "unsharp"]
MODES = ["pad", "crop", "stretch"]


def _real_images(nih_samples: Path, kermany_train: Path, n: int = 3) -> list[np.ndarray]:
    files = sorted((nih_samples / "images").glob("*.png"))[:n]
    files += sorted((kermany_train / "NORMAL").glob("*.jpeg"))[:n]
    return [decode_image(f) for f in files]


def _local_std(image: np.ndarray, window: int = 16) -> float:
    """Mean standard deviation over window x window neighbourhoods."""
    f = image.astype(np.float64)
    mean = cv2.blur(f, (window, window))
    sq = cv2.blur(f * f, (window, window))
    return float(np.sqrt(np.maximum(sq - mean * mean, 0)).mean())


@pytest.fixture(scope="module")
def xray(nih_samples: Path) -> np.ndarray:
    """A real 512 x 512 NIH chest X-ray, float32 [0, 1]."""
    return decode_image(nih_samples / "images" / "00000001_000.png")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FILTERS)
def test_output_is_uint8_square_for_every_mode_and_filter(xray, mode, name):
    wide = xray[128:384]  # 256 x 512
    cfg = PreprocessConfig(image_size=96, resize=mode, filter=name)
    out, geometry = preprocess_with_geometry(wide, cfg)
    assert out.shape == (96, 96) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert geometry.original_size == (256, 512) and geometry.output_size == 96
    assert np.array_equal(out, preprocess(wide, cfg))


def test_preprocess_is_deterministic_and_leaves_its_input_alone(xray):
    before = xray.copy()
    cfg = PreprocessConfig(filter="unsharp")
    assert np.array_equal(preprocess(xray, cfg), preprocess(xray, cfg))
    assert np.array_equal(xray, before)


def test_pad_keeps_aspect_ratio_with_black_bars_added_after_clahe(xray):
    wide = xray[128:384]  # 2:1, width twice the height
    out, geometry = preprocess_with_geometry(wide, PreprocessConfig(image_size=224, resize="pad"))
    assert geometry.resized_size == (112, 224) and geometry.pad_offset == (56, 0)
    assert not out[:56].any() and not out[168:].any()  # exact zeros: CLAHE never saw the bars
    assert (out[56:168] > 0).mean() > 0.9
    tall = np.ascontiguousarray(wide.T)
    out_tall = preprocess(tall, PreprocessConfig(image_size=224, resize="pad"))
    assert not out_tall[:, :56].any() and not out_tall[:, 168:].any()


def test_crop_fills_the_frame_with_the_centre():
    ramp = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (256, 1))  # 256 x 512, 2:1
    cfg = PreprocessConfig(image_size=64, resize="crop", clahe=False)
    out, geometry = preprocess_with_geometry(ramp, cfg)
    assert geometry.resized_size == (64, 128) and geometry.crop_offset == (0, 32)
    # The middle half of the ramp, 0.25 .. 0.75, fills the whole output.
    assert abs(out[:, 0].mean() - 0.25 * 255) < 3 and abs(out[:, -1].mean() - 0.75 * 255) < 3
    flat = preprocess(np.full((256, 512), 0.5, np.float32), cfg)
    assert np.all(flat == 128)  # no bars anywhere


def test_stretch_squeezes_the_whole_image_into_the_square():
    ramp = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (256, 1))
    out, geometry = preprocess_with_geometry(
        ramp, PreprocessConfig(image_size=64, resize="stretch", clahe=False)
    )
    assert geometry.resized_size == (64, 64) and geometry.scale == (0.25, 0.125)
    assert out[:, 0].max() <= 3 and out[:, -1].min() >= 252  # the whole ramp, end to end


def test_small_images_are_enlarged(xray):
    small = cv2.resize(xray, (40, 50), interpolation=cv2.INTER_AREA)
    out, geometry = preprocess_with_geometry(small, PreprocessConfig(image_size=128))
    assert out.shape == (128, 128) and geometry.resized_size == (128, 102)


def test_clahe_raises_local_contrast_on_real_xrays(nih_samples, kermany_train):
    for image in _real_images(nih_samples, kermany_train):
        plain = preprocess(image, PreprocessConfig(clahe=False))
        enhanced = preprocess(image, PreprocessConfig(clahe=True))
        assert _local_std(enhanced) > 1.25 * _local_std(plain)


def test_clahe_clip_limit_controls_the_strength(xray):
    weak = preprocess(xray, PreprocessConfig(clahe_clip_limit=1.0))
    strong = preprocess(xray, PreprocessConfig(clahe_clip_limit=4.0))
    assert _local_std(strong) > _local_std(weak)


@pytest.mark.parametrize(
    "shape,clip,grid", [((224, 224), 2.0, 8), ((230, 197), 4.0, 5), ((100, 61), 1.0, 3)]
)
def test_clahe_matches_opencv_on_8_bit_input(xray, shape, clip, grid):
    u8 = cv2.resize(np.rint(xray * 255).astype(np.uint8), shape[::-1], cv2.INTER_AREA)
    reference = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid)).apply(u8)
    ours = clahe(u8.astype(np.float32) / 255, clip, grid)
    assert np.abs(ours.astype(int) - reference).max() <= 1


def test_clahe_keeps_precision_of_float_input():
    # A faint, smooth ramp spanning 13 8-bit levels: 8-bit CLAHE can only output 13 levels,
    # ours reads each tile's mapping between levels and stretches it into many more.
    ramp = np.tile(np.linspace(0.40, 0.45, 224, dtype=np.float32), (224, 1))
    ours = clahe(ramp, 4.0, 2)
    eight_bit = cv2.createCLAHE(4.0, (2, 2)).apply(np.rint(ramp * 255).astype(np.uint8))
    assert len(np.unique(eight_bit)) <= 14
    assert len(np.unique(ours)) > 2 * len(np.unique(eight_bit))


def test_clahe_does_not_depend_on_how_many_grey_levels_the_source_has(xray):
    """The same picture as ~10,000 resampled levels or as 256 8-bit levels: the same output.

    (OpenCV's 16-bit CLAHE fails this: nearly a no-op on the 8-bit copy, near-full
    equalisation on the float one.)"""
    resampled = cv2.resize(xray, (224, 224), interpolation=cv2.INTER_AREA)
    eight_bit = np.rint(resampled * 255).astype(np.float32) / 255
    assert len(np.unique(resampled)) > 5000 and len(np.unique(eight_bit)) <= 256
    a, b = clahe(resampled, 2.0, 8), clahe(eight_bit, 2.0, 8)
    assert np.abs(a.astype(int) - b).mean() < 1.0
    assert _local_std(a) == pytest.approx(_local_std(b), rel=0.02)


def test_resize_first_makes_output_independent_of_source_resolution(xray):
    big = cv2.resize(xray, (2048, 2048), interpolation=cv2.INTER_LINEAR)
    cfg = PreprocessConfig(image_size=224)
    diff = np.abs(preprocess(big, cfg).astype(int) - preprocess(xray, cfg))
    assert diff.mean() < 2.0


def test_median_filter_removes_salt_and_pepper_noise(xray):
    rng = np.random.default_rng(0)
    cfg_plain = PreprocessConfig(image_size=224, clahe=False)
    clean = preprocess(xray, cfg_plain)
    noisy = clean.astype(np.float32) / 255
    mask = rng.random(noisy.shape) < 0.05
    noisy[mask] = rng.integers(0, 2, mask.sum()).astype(np.float32)  # black or white dots
    unfiltered = preprocess(noisy, cfg_plain)
    filtered = preprocess(noisy, PreprocessConfig(clahe=False, filter="median", filter_size=3))
    outliers = lambda u: (np.abs(u.astype(int) - clean) > 50).mean()  # noqa: E731
    assert outliers(unfiltered) > 0.03
    assert outliers(filtered) < 0.002


def test_gaussian_filter_smooths(xray):
    plain = preprocess(xray, PreprocessConfig())
    smooth = preprocess(xray, PreprocessConfig(filter="gaussian", filter_size=5))
    lap = lambda u: np.abs(cv2.Laplacian(u.astype(np.float64), cv2.CV_64F)).mean()  # noqa: E731
    assert lap(smooth) < 0.6 * lap(plain)


def test_bilateral_filter_smooths_flat_regions_and_keeps_edges():
    rng = np.random.default_rng(1)
    step = np.zeros((128, 128), np.float32)
    step[:, 64:] = 0.8
    noisy = np.clip(step + rng.normal(0, 0.02, step.shape).astype(np.float32), 0, 1)
    cfg = dict(image_size=128, clahe=False)
    plain = preprocess(noisy, PreprocessConfig(**cfg)).astype(float)
    smooth = preprocess(noisy, PreprocessConfig(**cfg, filter="bilateral", filter_size=7))
    smooth = smooth.astype(float)
    assert smooth[:, 70:120].std() < 0.6 * plain[:, 70:120].std()
    edge = lambda u: u[:, 66:70].mean() - u[:, 58:62].mean()  # noqa: E731
    assert edge(smooth) > 0.95 * edge(plain)


def test_unsharp_mask_raises_edge_contrast(xray):
    blurred_step = cv2.GaussianBlur(
        np.where(np.arange(128) < 64, 0.3, 0.7).astype(np.float32)[None].repeat(128, 0), (0, 0), 2
    )
    cfg = dict(image_size=128, clahe=False)
    plain = preprocess(blurred_step, PreprocessConfig(**cfg)).astype(float)
    sharp = preprocess(blurred_step, PreprocessConfig(**cfg, filter="unsharp", filter_size=2))
    sharp = sharp.astype(float)
    assert np.abs(np.diff(sharp, axis=1)).max() > 1.2 * np.abs(np.diff(plain, axis=1)).max()
    assert sharp[:, 66:70].mean() > plain[:, 66:70].mean()  # overshoot on the bright side
    assert sharp[:, 58:62].mean() < plain[:, 58:62].mean()  # undershoot on the dark side
    # and on a real X-ray: more fine detail
    lap = lambda u: np.abs(cv2.Laplacian(u.astype(np.float64), cv2.CV_64F)).mean()  # noqa: E731
    assert lap(preprocess(xray, PreprocessConfig(filter="unsharp"))) > lap(
        preprocess(xray, PreprocessConfig())
    )


def test_even_kernel_size_is_a_config_error(xray):
    with pytest.raises(ConfigError, match="filter_size must be odd"):
        preprocess(xray, PreprocessConfig(filter="median", filter_size=4))


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((8, 8), np.uint8), "float"),
        (np.zeros((8, 8, 3), np.float32), "2-D"),
        (np.zeros((0, 8), np.float32), "2-D"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.full((8, 8), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((8, 8), -0.1, np.float32), r"\[0, 1\]"),
        ([[0.0, 1.0]], "numpy array"),
    ],
)
def test_bad_input_is_rejected_naming_image(bad, match):
    with pytest.raises(ValueError, match=match) as info:
        preprocess(bad, PreprocessConfig())
    assert "image" in str(info.value)


def _hot_spot(shape: tuple[int, int], centre: tuple[int, int]) -> np.ndarray:
    image = np.zeros(shape, np.float32)
    cv2.circle(image, (centre[1], centre[0]), 4, 1.0, -1)
    return cv2.GaussianBlur(image, (0, 0), 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(600, 300), (300, 640), (97, 211)])
def test_heatmap_maps_back_onto_the_original(mode, shape):
    h, w = shape
    cfg = PreprocessConfig(image_size=128, resize=mode, clahe=False)
    # Spots inside the centre square, so that crop mode sees them too.
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    for fy, fx in [(0.2, 0.3), (0.5, 0.5), (0.8, 0.75)]:
        centre = (top + int(fy * side), left + int(fx * side))
        out, geometry = preprocess_with_geometry(_hot_spot(shape, centre), cfg)
        back = heatmap_to_original(out.astype(np.float32), geometry)
        assert back.shape == shape and back.dtype == np.float32
        peak = np.unravel_index(back.argmax(), shape)
        assert abs(peak[0] - centre[0]) <= 2 and abs(peak[1] - centre[1]) <= 2, (peak, centre)


def test_heatmap_outside_the_crop_is_zero():
    cfg = PreprocessConfig(image_size=64, resize="crop")
    _, geometry = preprocess_with_geometry(np.zeros((300, 100), np.float32), cfg)
    back = heatmap_to_original(np.ones((64, 64), np.float32), geometry)
    assert np.all(back[:98] == 0) and np.all(back[202:] == 0)  # 100 rows of the middle are seen
    assert np.all(back[102:198] == 1)


def test_low_resolution_heatmap_covers_the_same_canvas():
    cfg = PreprocessConfig(image_size=224, resize="pad")
    image = _hot_spot((400, 200), (300, 60))
    out, geometry = preprocess_with_geometry(image, cfg)
    coarse = cv2.resize(out.astype(np.float32), (28, 28), interpolation=cv2.INTER_AREA)
    back = heatmap_to_original(coarse, geometry)
    peak = np.unravel_index(back.argmax(), back.shape)
    assert abs(peak[0] - 300) <= 8 and abs(peak[1] - 60) <= 8


def test_heatmap_must_be_square_2d():
    _, geometry = preprocess_with_geometry(np.zeros((50, 80), np.float32), PreprocessConfig())
    with pytest.raises(ValueError, match="heatmap"):
        heatmap_to_original(np.zeros((224, 200)), geometry)


def test_tensor_helpers_map_uint8_to_normalised_model_input(xray):
    pixels = preprocess(xray, PreprocessConfig(image_size=64))
    batch = torch.from_numpy(pixels)[None]
    unit = to_unit(batch)
    assert unit.shape == (1, 1, 64, 64) and unit.dtype == torch.float32
    assert torch.allclose(unit[0, 0], torch.from_numpy(pixels).float() / 255)
    assert torch.equal(to_unit(batch[:, None]), unit)
    x = model_input(batch)
    assert torch.allclose(x, (unit - MEAN) / STD) and torch.equal(x, normalize(unit))
    assert x.min() >= -2.0 and x.max() <= 2.0


def test_to_unit_rejects_float_or_badly_shaped_batches():
    with pytest.raises(ValueError, match="batch"):
        to_unit(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="batch"):
        to_unit(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch"):
        to_unit(np.zeros((2, 8, 8), np.uint8))
