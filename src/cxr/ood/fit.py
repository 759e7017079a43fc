"""Fitting the out-of-distribution gate (`cxr ood-fit`) and measuring what it flags.

The gate itself, its checks and its file format are in `cxr.ood.gate`; this module makes one from a
run's training images and counts its verdicts on a set of inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cxr.data.cache import build_cache
from cxr.data.prepare import resolve_table
from cxr.data.table import load_image
from cxr.errors import CxrError
from cxr.ood.gate import (
    MIDLINE_MARGIN,
    Mahalanobis,
    OodConfig,
    OodGate,
    colour_sample,
    midline_score,
    penultimate_features,
    thumbnails,
)
from cxr.preprocess import preprocess
from cxr.run import LoadedRun, load_run, split_keys


def fit_ood_gate(
    run: str | Path | LoadedRun,
    images: np.ndarray | Sequence[np.ndarray],
    config: OodConfig | None = None,
    progress: bool = True,
) -> OodGate:
    """Fit the gate on a run's TRAINING images.

    images: preprocessed uint8 (N, S, S) pixels (e.g. `CachedImages.pixels`), or decoded
    originals (a sequence of float [0, 1] 2-D arrays), which are preprocessed here.
    """
    config = config or OodConfig()
    run = run if isinstance(run, LoadedRun) else load_run(run)
    pixels = _as_preprocessed(images, run, progress)
    n = len(pixels)
    n_cal = int(round(config.calibration_fraction * n))
    if n - n_cal < 20 or n_cal < 10:
        raise CxrError(
            f"the gate needs at least 30 training images (20 to fit, 10 to calibrate), got {n}"
        )
    order = np.random.default_rng(config.seed).permutation(n)
    fit_idx, cal_idx = np.sort(order[n_cal:]), np.sort(order[:n_cal])

    feats = penultimate_features(run.model, pixels)
    thumbs = thumbnails(pixels, config.thumbnail)
    midline = np.array([midline_score(p) for p in pixels])
    features = Mahalanobis.fit(feats[fit_idx])
    layout = Mahalanobis.fit(thumbs[fit_idx])
    q = config.percentile
    limits = {
        "feature_max": float(np.percentile(features.distance(feats[cal_idx]), q)),
        "layout_max": float(np.percentile(layout.distance(thumbs[cal_idx]), q)),
        "midline_min": float(np.percentile(midline, config.midline_percentile) - MIDLINE_MARGIN),
        "contrast_min": config.min_contrast,
        "colour_max": config.colour_max,
    }
    info = {
        "n_fit": len(fit_idx),
        "n_calibration": len(cal_idx),
        "feature_dim": int(feats.shape[1]),
        "midline_median": float(np.median(midline)),
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "thresholds: percentile of held-out training distances",
    }
    return OodGate(run, config, features, layout, limits, info)


def fit_ood_gate_for_run(
    run_dir: str | Path | LoadedRun,
    config: OodConfig | None = None,
    limit: int | None = 2000,
    progress: bool = True,
) -> OodGate:
    """Fit on the training split of a finished run (its split.csv), from the preprocessing cache
    where training left it; at most `limit` images (a seeded sample), then save into the run."""
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
    run_dir = run.run_dir
    config = config or OodConfig()
    cfg = run.config
    table = resolve_table(cfg.data, cfg.train.cache_dir, progress)
    wanted = split_keys(run_dir, "train")
    index = [i for i, key in enumerate(table.keys) if key in wanted]
    if not index:
        raise CxrError(f"{run_dir}/split.csv lists no training image that the data still has")
    cached = build_cache(
        table.subset(index), cfg.preprocess, cfg.train.cache_dir, skip_bad=True, progress=progress
    )
    pixels = cached.pixels
    if limit is not None and len(pixels) > limit:
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(pixels))[:limit])
        pixels = pixels[keep]
    gate = fit_ood_gate(run, np.asarray(pixels), config, progress)
    gate.save(run_dir)
    return gate


def iter_split_images(
    run: LoadedRun, split: str, limit: int | None = None, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(decoded image, raw pixels) of the images the run's split.csv puts in `split`.

    At most `limit`, a seeded sample. Unreadable files are left out (they are not the gate's
    business: decoding refuses them before the gate sees them).
    """

    table = resolve_table(run.config.data, run.config.train.cache_dir, progress=False)
    wanted = split_keys(run.run_dir, split)
    index = [i for i, key in enumerate(table.keys) if key in wanted]
    if limit is not None and len(index) > limit:
        index = sorted(np.random.default_rng(seed).permutation(index)[:limit].tolist())
    for i in index:
        try:
            image = load_image(table, i)
            if table.arrays is not None:
                raw = np.asarray(table.arrays[i])
            else:
                raw = colour_sample(Path(table.keys[i]).read_bytes())
        except (CxrError, OSError):
            continue
        yield image, raw


def flag_rate(
    gate: OodGate, inputs: Iterable[tuple[np.ndarray, np.ndarray | None]], progress: bool = True
) -> dict:
    """How many (image, raw) inputs the gate flags, and which check flagged them first."""
    from tqdm.auto import tqdm

    n, flagged, by_check = 0, 0, {}
    for image, raw in tqdm(inputs, desc="ood gate", unit="img", disable=not progress, leave=False):
        result = gate.check(image, raw)
        n += 1
        if not result.ok:
            flagged += 1
            first = next(name for name, c in result.checks.items() if not c["ok"])
            by_check[first] = by_check.get(first, 0) + 1
    return {"n": n, "flagged": flagged, "rate": flagged / n if n else None, "by_check": by_check}


def _as_preprocessed(images, run: LoadedRun, progress: bool) -> np.ndarray:
    s = run.config.preprocess.image_size
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 3 or images.shape[1:] != (s, s):
            raise ValueError(
                f"preprocessed images must be uint8 (N, {s}, {s}) for this run, got {images.shape}"
            )
        return images
    from tqdm.auto import tqdm

    out = [
        preprocess(np.asarray(img, dtype=np.float32), run.config.preprocess)
        for img in tqdm(images, desc="ood gate: preprocessing", disable=not progress, leave=False)
    ]
    if not out:
        raise ValueError("no images to fit the gate on")
    return np.stack(out)
