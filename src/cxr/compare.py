"""Is model B better than model A? The paired difference of per-finding AUROC on the SAME images.

Two runs scored on one set of images give correlated AUROCs; comparing their separate confidence
intervals overstates the uncertainty of the difference (and "the intervals overlap" is not a
test). Two paired methods:

- "delong" (default): DeLong, DeLong & Clarke-Pearson (Biometrics 1988), the structural-component
  variance of the difference of two correlated AUROCs, in the O(N log N) form of Sun & Xu (IEEE
  SPL 2014); a normal interval and two-sided p-value. It treats images as independent.
- "bootstrap": patients resampled with replacement (every image of a drawn patient goes in),
  the same draws for both models; percentile interval of the difference and the two-sided
  p-value 2 x min(share of differences <= 0, share >= 0). Use it when patients have several
  images.

    cxr compare runs/a runs/b --data ../shared/data/nih-chestxray14-1000 --json cmp.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import ndtri
from scipy.stats import norm, rankdata

from cxr.bootstrap import group_index, patient_weights, weighted_auroc
from cxr.checkpoint import write_json
from cxr.config import DataConfig
from cxr.data.cache import build_cache
from cxr.data.prepare import resolve_table
from cxr.errors import ConfigError, DataError
from cxr.models import probabilities_numpy
from cxr.run import images_in_split, load_run
from cxr.runtime import forward, select_runtime

METHODS = ("delong", "bootstrap")


def _binary(labels, scores_a, scores_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != a.shape or a.shape != b.shape:
        raise ValueError(
            f"labels {labels.shape} and both scores {a.shape}, {b.shape} must be 1-D of one length"
        )
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1 (mask unknown labels first)")
    return labels.astype(bool), a, b


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Sun & Xu's structural components: V10 (per positive), V01 (per negative), AUROC."""
    m, n = len(pos), len(neg)
    both = np.concatenate([pos, neg])
    rank_all = rankdata(both)  # midranks: a tie counts one half
    v10 = (rank_all[:m] - rankdata(pos)) / n
    v01 = 1.0 - (rank_all[m:] - rankdata(neg)) / m
    return v10, v01, float(v10.mean())


def delong_paired(labels, scores_a, scores_b, alpha: float = 0.05) -> dict:
    """AUROC of A and B on the same cases, B - A, its DeLong standard error, interval, p."""
    y, a, b = _binary(labels, scores_a, scores_b)
    if y.all() or not y.any():
        return _not_estimable("delong")
    va10, va01, auc_a = _placements(a[y], a[~y])
    vb10, vb01, auc_b = _placements(b[y], b[~y])
    s10 = np.cov(np.stack([va10, vb10]))  # 2 x 2 covariance over positives
    s01 = np.cov(np.stack([va01, vb01]))  # ... over negatives
    m, n = int(y.sum()), int((~y).sum())
    contrast = np.array([-1.0, 1.0])  # B - A
    var = float(contrast @ (s10 / m + s01 / n) @ contrast) if m > 1 and n > 1 else float("nan")
    diff = auc_b - auc_a
    out = {
        "method": "delong",
        "auroc_a": auc_a,
        "auroc_b": auc_b,
        "difference": diff,
        "n_positive": m,
        "n_negative": n,
    }
    if not np.isfinite(var) or var <= 0:
        # identical scores (or a degenerate split): no variance, nothing to test
        same = np.isclose(diff, 0.0)
        return out | {
            "se": 0.0 if same else None,
            "low": diff if same else None,
            "high": diff if same else None,
            "p_value": 1.0 if same else None,
        }
    se = float(np.sqrt(var))
    z = float(ndtri(1 - alpha / 2))
    return out | {
        "se": se,
        "low": diff - z * se,
        "high": diff + z * se,
        "p_value": float(2 * norm.sf(abs(diff) / se)),
    }


def bootstrap_paired(
    labels,
    scores_a,
    scores_b,
    patients=None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """B - A by a paired patient bootstrap: both models see the same resampled patients."""
    y, a, b = _binary(labels, scores_a, scores_b)
    if y.all() or not y.any():
        return _not_estimable("bootstrap")
    if n_boot < 100:
        raise ConfigError(f"--n-boot must be at least 100 for a p-value, got {n_boot}")
    inverse, n_groups = group_index(patients, len(y))
    weights = patient_weights(inverse, n_groups, n_boot, np.random.default_rng(seed))
    ones = np.ones((1, len(y)))
    auc_a = float(weighted_auroc(y, a, ones)[0])
    auc_b = float(weighted_auroc(y, b, ones)[0])
    diffs = weighted_auroc(y, b, weights) - weighted_auroc(y, a, weights)
    diffs = diffs[np.isfinite(diffs)]  # a resample without positives has no AUROC
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return {
        "method": "bootstrap",
        "auroc_a": auc_a,
        "auroc_b": auc_b,
        "difference": auc_b - auc_a,
        "se": float(diffs.std(ddof=1)),
        "low": float(low),
        "high": float(high),
        "p_value": float(p),
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        "n_boot": n_boot,
        "n_used": int(diffs.size),
        "n_patients": n_groups,
    }


def _not_estimable(method: str) -> dict:
    return {
        "method": method,
        "auroc_a": None,
        "auroc_b": None,
        "difference": None,
        "se": None,
        "low": None,
        "high": None,
        "p_value": None,
    }


def compare_scores(
    y_true,
    scores_a,
    scores_b,
    findings: list[str],
    method: str = "delong",
    patients=None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Per-finding paired comparison (NaN labels masked per finding) of two (N, K) scores."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    y = np.asarray(y_true, dtype=np.float64)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if not (y.shape == a.shape == b.shape and y.ndim == 2 and y.shape[1] == len(findings)):
        raise ValueError(
            f"labels {y.shape} and scores {a.shape}, {b.shape} must all be (N, {len(findings)})"
        )
    per = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(y[:, j])
        if method == "delong":
            per[name] = delong_paired(y[known, j], a[known, j], b[known, j], alpha)
        else:
            groups = None if patients is None else np.asarray(patients)[known]
            per[name] = bootstrap_paired(
                y[known, j], a[known, j], b[known, j], groups, n_boot, seed, alpha
            )
    diffs = [v["difference"] for v in per.values() if v["difference"] is not None]
    return {
        "method": method,
        "alpha": alpha,
        "n_images": int(len(y)),
        "findings": per,
        "mean_difference": float(np.mean(diffs)) if diffs else None,
        "note": "difference = B - A on the same images; p: two-sided, per finding, not "
        "corrected for multiple findings",
    }


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    data: DataConfig,
    method: str = "delong",
    split: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    out_json: str | Path | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Score both runs on the same images of `data` and compare them finding by finding.

    The findings compared are those both runs and the data share (by name); each run
    preprocesses the images with its own config. With `split`, only images that run A's
    split.csv puts in that split (the same file set for both).
    """
    rt = select_runtime(device)  # this machine's, never the training run's
    runs = [load_run(run_a, rt.device), load_run(run_b, rt.device)]
    if runs[0].task != runs[1].task:
        raise ConfigError(
            f"{run_a} is {runs[0].task} and {run_b} {runs[1].task}: their "
            "probabilities are not comparable"
        )
    table = resolve_table(data, runs[0].config.train.cache_dir, progress)
    shared = [f for f in runs[0].findings if f in runs[1].findings and f in table.findings]
    if not shared:
        raise DataError(
            f"no finding is in both runs ({runs[0].findings}, {runs[1].findings}) "
            f"and the data ({table.findings})",
            path=data.path,
        )
    if split is not None:
        table = images_in_split(table, run_a, split, data.path)
    scores = []
    for run in runs:
        images = build_cache(
            table,
            run.config.preprocess,
            run.config.train.cache_dir,
            data.skip_bad,
            progress=progress,
        )
        if images.table.keys != table.keys:  # skip_bad left a different file out
            raise DataError(
                "the two runs could not read the same images (see --skip-bad)", path=data.path
            )
        logits, _ = forward(run.model, images.pixels, rt, progress=progress, desc="compare")
        probs = probabilities_numpy(logits, run.task)
        scores.append(probs[:, [run.findings.index(f) for f in shared]])
    y = table.labels[:, [table.findings.index(f) for f in shared]]
    result = compare_scores(
        y, scores[0], scores[1], shared, method, table.patient_ids, n_boot, seed, alpha
    )
    result |= {
        "a": str(run_a),
        "b": str(run_b),
        "data": data.path,
        "split": split or "all",
        "n_patients": len(set(table.patient_ids)),
    }
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(out_json), result)
    return result


def format_comparison(result: dict) -> str:
    """Plain-text table: AUROC of A and B, B - A with its interval, p-value, per finding."""
    level = f"{1 - result['alpha']:.0%}"
    names = list(result["findings"])
    width = max(len("finding"), *(len(n) for n in names))
    header = (
        f"{'finding':<{width}}{'AUROC A':>9}{'AUROC B':>9}{'B - A':>9}"
        f"{level + ' interval':>22}{'p':>9}"
    )
    lines = [header, "-" * len(header)]

    def num(v, digits=3) -> str:
        return "n/e" if v is None else f"{v:.{digits}f}"

    for name in names:
        r = result["findings"][name]
        interval = "n/e" if r["low"] is None else f"[{r['low']:+.3f}, {r['high']:+.3f}]"
        p = (
            "n/e"
            if r["p_value"] is None
            else ("<0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}")
        )
        diff = "n/e" if r["difference"] is None else f"{r['difference']:+.3f}"
        lines.append(
            f"{name:<{width}}{num(r['auroc_a']):>9}{num(r['auroc_b']):>9}{diff:>9}"
            f"{interval:>22}{p:>9}"
        )
    method = (
        "DeLong (images independent)"
        if result["method"] == "delong"
        else "paired patient bootstrap"
    )
    lines.append("-" * len(header))
    lines.append(
        f"A = {result.get('a', 'A')}, B = {result.get('b', 'B')}; "
        f"{result['n_images']} images; {method}; {result['note']}"
    )
    return "\n".join(lines)
