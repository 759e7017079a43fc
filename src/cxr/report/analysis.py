"""The report's per-subgroup and test-time-augmentation analyses: pure functions of scores.

Both take the evaluation images' labels, logits and patients (`ScoredImages`) and resample
patients, not images, for their intervals, like the rest of `cxr.report.build`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxr.bootstrap import binary_statistics, bootstrap_intervals
from cxr.calibration import apply_temperature

AGE_BANDS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 125, "80+"))
SUBGROUPS = {"sex": "sex", "age": "age band", "view": "view position"}
TTA_VIEWS = (
    ("identity", 0.0, 1.0),
    ("rotate +5 deg", 5.0, 1.0),
    ("rotate -5 deg", -5.0, 1.0),
    ("zoom 1.08", 0.0, 1.08),
)

OPERATING_POINTS = {
    "youden": "Youden's J (max sensitivity + specificity - 1)",
    "sensitivity:0.95": "sensitivity >= 0.95 on validation",
    "specificity:0.95": "specificity >= 0.95 on validation",
}
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


@dataclass
class ScoredImages:
    """Labels (N, K) with NaN = unknown, logits (N, K), and who each image belongs to."""

    labels: np.ndarray
    logits: np.ndarray
    patients: list[str]
    meta: dict[str, list]
    keys: list[str]


def known_mask(labels: np.ndarray, j: int) -> np.ndarray:
    """Images whose label for finding j is known (NaN marks an unknown label)."""
    return ~np.isnan(labels[:, j])


def age_band(age) -> str | None:
    """The band of an age in whole years; None for missing or implausible ages (> 124)."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    for low, high, label in AGE_BANDS:
        if low <= age < high:
            return label
    return None


def _subgroup_levels(meta: dict[str, list]) -> dict[str, list]:
    """{variable: level per image (None = unknown)} for the subgroup variables the data has."""
    out = {}
    for key in SUBGROUPS:
        values = meta.get(key)
        if not values:
            continue
        if key == "age":
            levels = [age_band(v) for v in values]
        else:
            levels = [
                None if v is None or str(v).strip() in ("", "nan") else str(v).strip()
                for v in values
            ]
        if any(level is not None for level in levels):
            out[key] = levels
    return out


def subgroup_analysis(
    findings: list[str],
    test: ScoredImages,
    probs: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Per subgroup (sex, age band, view): images, and per finding counts and AUROC interval."""
    out: dict = {}
    for key, levels in _subgroup_levels(test.meta).items():
        order = [b[2] for b in AGE_BANDS] if key == "age" else sorted({v for v in levels if v})
        out[key] = {"label": SUBGROUPS[key], "levels": {}}
        for level in order:
            index = np.array([i for i, v in enumerate(levels) if v == level], dtype=np.int64)
            if index.size == 0:
                continue
            labels = test.labels[index]
            stats, counts = {}, {}
            for j, name in enumerate(findings):
                known = known_mask(labels, j)
                y = labels[known, j].astype(np.int64)
                counts[name] = {"n_positive": int(y.sum()), "n_negative": int((1 - y).sum())}
                scores = probs[index][known, j]
                stats[name] = binary_statistics(y, scores, mask=known)
            intervals = bootstrap_intervals(
                stats,
                index.size,
                [test.patients[i] for i in index],
                n_boot,
                0.05,
                seed,
                progress,
                f"bootstrap {key}={level}",
            )
            out[key]["levels"][level] = {
                "n_images": int(index.size),
                "n_patients": len({test.patients[i] for i in index}),
                "findings": {
                    name: counts[name] | {"auroc": intervals[f"{name}|auroc"].as_dict()}
                    for name in findings
                },
            }
    return out


def _paired_auroc(plain, tta):
    """AUROC of both from the same resamples, and their difference (paired)."""

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        a, b = plain(weights)["auroc"], tta(weights)["auroc"]
        return {"plain": a, "tta": b, "delta": b - a}

    return statistic


def tta_analysis(
    findings: list[str],
    task: str,
    test: ScoredImages,
    tta_logits: np.ndarray,
    temperature: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """AUROC without and with test-time augmentation, and the paired difference's interval."""
    plain = apply_temperature(test.logits, task, temperature)
    tta = apply_temperature(tta_logits, task, temperature)
    stats = {}
    for j, name in enumerate(findings):
        known = known_mask(test.labels, j)
        y = test.labels[known, j].astype(np.int64)
        a, b = plain[known, j], tta[known, j]
        stats[name] = _paired_auroc(
            binary_statistics(y, a, mask=known), binary_statistics(y, b, mask=known)
        )
    intervals = bootstrap_intervals(stats, len(test.labels), test.patients, n_boot, 0.05, seed)
    return {
        "views": [name for name, _, _ in TTA_VIEWS],
        "combine": "mean of logits over the views",
        "findings": {
            name: {
                part: intervals[f"{name}|{part}"].as_dict() for part in ("plain", "tta", "delta")
            }
            for name in findings
        },
    }


def tta_transform(angle_deg: float, zoom: float):
    """A deterministic view of a float (B, 1, S, S) batch: rotation and zoom about the centre."""
    import torch
    import torch.nn.functional as F

    def view(x: torch.Tensor) -> torch.Tensor:
        if angle_deg == 0.0 and zoom == 1.0:
            return x
        a = math.radians(angle_deg)
        theta = torch.tensor(
            [
                [math.cos(a) / zoom, -math.sin(a) / zoom, 0.0],
                [math.sin(a) / zoom, math.cos(a) / zoom, 0.0],
            ],
            dtype=x.dtype,
            device=x.device,
        ).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)

    return view
