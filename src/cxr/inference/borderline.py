"""Honest calls: a borderline band around each decision threshold, and which findings the model
cannot call reliably, both read from the run's validation metrics.

A score just above a Youden threshold is not a firm "positive": the band between the
sensitivity-0.95 and specificity-0.95 thresholds on the validation split (each widened to
include the chosen threshold) is where the model's calls flip for 5% of the validation cases on
either side, so the web app words scores inside it as "possible". A finding whose validation
AUROC is at most RELIABLE_AUROC (or not estimable: no positives in validation) ranks cases little
better than chance, so its calls are flagged and left out of positive counts.
"""

from __future__ import annotations

import math

RELIABLE_AUROC = 0.6
# The served threshold and the one val_metrics.json was scored at must agree to this much, or
# the band (on the uncalibrated scale) would be laid on a different probability scale.
_SAME_THRESHOLD = 1e-6


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def finding_bands(val_metrics: dict | None, thresholds: dict[str, float]) -> dict[str, dict]:
    """{finding: {threshold, low, high, band_source, auroc, reliable}} for GET /api/model and
    every prediction. Without validation operating points low == high == threshold."""
    val_metrics = val_metrics or {}
    per = val_metrics.get("per_finding", {})
    aurocs = val_metrics.get("auroc", {})
    bands = {}
    for finding, threshold in thresholds.items():
        stats = per.get(finding, {})
        auroc = _number(aurocs.get(finding))
        sens = _number(stats.get("threshold_sensitivity_95"))
        spec = _number(stats.get("threshold_specificity_95"))
        scored_at = _number(stats.get("threshold"))
        low = high = float(threshold)
        if sens is None or spec is None:
            source = "none: this run's validation metrics have no operating points"
        elif scored_at is None or abs(scored_at - threshold) > _SAME_THRESHOLD:
            source = "none: the served threshold differs from the validation one (calibration)"
        else:
            low, high = min(threshold, sens, spec), max(threshold, sens, spec)
            source = "validation: between the sensitivity-0.95 and specificity-0.95 thresholds"
        bands[finding] = {
            "threshold": float(threshold),
            "low": low,
            "high": high,
            "band_source": source,
            "auroc": auroc,
            "reliable": auroc is not None and auroc > RELIABLE_AUROC,
        }
    return bands


def grade(finding: dict, band: dict) -> dict:
    """A prediction's finding with its honest call added: positive (at or over the band),
    possible (inside it), negative (under it); its margin to the threshold; reliability."""
    p = float(finding["probability"])
    if band["low"] < band["high"]:
        call = "positive" if p >= band["high"] else "possible" if p >= band["low"] else "negative"
    else:
        call = "positive" if p >= band["threshold"] else "negative"
    return {
        **finding,
        "call": call,
        "margin": p - band["threshold"],
        "band": [band["low"], band["high"]],
        "auroc": band["auroc"],
        "reliable": band["reliable"],
    }
