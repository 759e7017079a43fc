"""Mean and spread over seeds, for the benchmarks that repeat a measurement (`--seeds N`)."""

from __future__ import annotations

import numpy as np


def spread(values: list[float | None]) -> dict:
    """Mean, sample standard deviation (n - 1; 0 for one value), min, max and n of the known
    values (None: not estimable in that seed, left out and counted in n_missing)."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return {
            "mean": None,
            "sd": None,
            "min": None,
            "max": None,
            "n": 0,
            "n_missing": len(values),
            "values": list(values),
        }
    return {
        "mean": float(kept.mean()),
        "sd": float(kept.std(ddof=1)) if kept.size > 1 else 0.0,
        "min": float(kept.min()),
        "max": float(kept.max()),
        "n": int(kept.size),
        "n_missing": len(values) - int(kept.size),
        "values": list(values),
    }


def show(s: dict, digits: int = 3) -> str:
    """Mean +- sd over seeds, e.g. 0.812 +- 0.014; "n/e" when no seed had a value, no sd when
    only one had."""
    if s["mean"] is None:
        return "n/e"
    text = f"{s['mean']:.{digits}f}"
    if s["n"] > 1:
        text += f" +- {s['sd']:.{digits}f}"
    return text + (f" ({s['n']} of {s['n'] + s['n_missing']})" if s["n_missing"] else "")
