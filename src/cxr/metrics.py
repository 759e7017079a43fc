"""Per-finding metrics and operating thresholds: pure functions of labels and scores.

Conventions (shared with `cxr.data.table`):
- `y_true` is (N, K): multilabel 1/0 with NaN = unknown (masked per column); multiclass one-hot.
- `y_score` is (N, K) probabilities in [0, 1] (sigmoid for multilabel, softmax for multiclass).
- A case is called positive when `score >= threshold` (scikit-learn's `roc_curve` convention), so
  a threshold taken from a curve reproduces that curve's operating point exactly.
- A finding with no positives or no negatives among its labelled cases is "not estimable":
  its AUROC/AUPRC are None, never a number, and its threshold falls back to 0.5.
"""

from __future__ import annotations

import numpy as np

from cxr.bootstrap import binary_statistics, bootstrap_intervals
from cxr.decision import decision_rule, positive_index

TASKS = ("multilabel", "multiclass")
FALLBACK_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------
# Validation at the door
# ---------------------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def check_labels_scores(y_true, y_score, task: str) -> tuple[np.ndarray, np.ndarray]:
    _check_task(task)
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2:
        raise ValueError(f"y_true must be 2-D (N, K), got shape {y_true.shape}")
    if y_score.ndim != 2:
        raise ValueError(f"y_score must be 2-D (N, K), got shape {y_score.shape}")
    if y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true shape {y_true.shape} and y_score shape {y_score.shape} must match"
        )
    if y_true.shape[0] == 0 or y_true.shape[1] == 0:
        raise ValueError(f"y_true must have at least one row and one column, got {y_true.shape}")
    known = y_true[~np.isnan(y_true)]
    if not np.all((known == 0) | (known == 1)):
        raise ValueError("y_true must hold only 1, 0 or NaN (unknown)")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score must be finite (no NaN or inf)")
    if y_score.min() < 0.0 or y_score.max() > 1.0:
        raise ValueError(
            f"y_score must be probabilities in [0, 1], got range "
            f"[{y_score.min():.4g}, {y_score.max():.4g}] (apply sigmoid/softmax to logits)"
        )
    if task == "multiclass":
        if np.isnan(y_true).any():
            raise ValueError("y_true must be one-hot without NaN for task 'multiclass'")
        if not np.all(y_true.sum(axis=1) == 1):
            raise ValueError("y_true rows must be one-hot (exactly one 1) for task 'multiclass'")
        if y_true.shape[1] < 2:
            raise ValueError("y_true must have at least 2 columns (classes) for 'multiclass'")
    return y_true, y_score


def check_thresholds(thresholds, k: int) -> np.ndarray:
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (k,):
        raise ValueError(f"thresholds must have shape ({k},), got {thresholds.shape}")
    if not np.all(np.isfinite(thresholds)) or thresholds.min() < 0 or thresholds.max() > 1:
        raise ValueError("thresholds must be finite and in [0, 1]")
    return thresholds


def _parse_method(method: str) -> tuple[str, float | None]:
    if method in ("youden", "f1"):
        return method, None
    name, sep, value = method.partition(":")
    if sep and name in ("sensitivity", "specificity"):
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0.0 < target <= 1.0:
            return name, target
    raise ValueError(
        f"method must be 'youden', 'f1', 'sensitivity:T' or 'specificity:T' with T in (0, 1], "
        f"got {method!r}"
    )


# ---------------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------------


def label_column(y_true: np.ndarray, y_score: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled cases of column j: (0/1 int labels, scores)."""
    known = ~np.isnan(y_true[:, j])
    return y_true[known, j].astype(np.int64), y_score[known, j]


def is_estimable(labels: np.ndarray) -> bool:
    n_pos = int(labels.sum())
    return 0 < n_pos < labels.size


def estimable_columns(y_true: np.ndarray) -> np.ndarray:
    """(K,) bool: True where a column has at least one positive and one negative (NaN masked)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    if y_true.ndim != 2:
        raise ValueError(f"y_true must be 2-D (N, K), got shape {y_true.shape}")
    known = ~np.isnan(y_true)
    n_pos = np.where(known, y_true == 1, False).sum(axis=0)
    n_neg = np.where(known, y_true == 0, False).sum(axis=0)
    return (n_pos > 0) & (n_neg > 0)


def _ties(values: np.ndarray) -> np.ndarray:
    """Indices at the maximum, with a tolerance: 1 - 1/3 and 2/3 - 0 must count as a tie."""
    return np.flatnonzero(values >= values.max() - 1e-12)


def _logit(p: float) -> float:
    p = min(max(p, 1e-15), 1.0 - 1e-15)
    return float(np.log(p) - np.log1p(-p))


def _gap_middle(thr: np.ndarray, i: int) -> float:
    """The middle of the interval of thresholds that make the same calls as thr[i].

    thr holds the distinct scores, decreasing. Any t in (thr[i + 1], thr[i]] calls the same
    cases positive; the middle is taken on the logit scale, where temperature scaling is a
    plain division, so a calibrated threshold is the same point of the ordering as a raw one.
    The lowest score has no gap below it and is kept as it is.
    """
    hi = float(thr[i])
    if i + 1 >= len(thr):
        return hi
    lo = float(thr[i + 1])
    middle = float(1.0 / (1.0 + np.exp(-0.5 * (_logit(lo) + _logit(hi)))))
    return middle if lo < middle <= hi else hi


def _tied_middle(thr: np.ndarray, tied: np.ndarray) -> float:
    """The middle of the interval of thresholds at which the objective is at its maximum.

    thr holds the distinct scores, decreasing; a run of tied neighbours i..j is one interval
    (thr[j + 1], thr[i]] of thresholds with the same objective (on validation). Taking its
    highest or lowest end puts the operating point on a validation score, as far as it can go
    in one direction; the middle is stable under ties. With several separate tied runs the
    widest wins. The middle is taken on the logit scale (see _gap_middle).
    """
    runs: list[tuple[int, int]] = []
    for i in tied.tolist():
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    n = len(thr)

    def bounds(run: tuple[int, int]) -> tuple[float, float | None]:
        return float(thr[run[0]]), (float(thr[run[1] + 1]) if run[1] + 1 < n else None)

    def width(run: tuple[int, int]) -> float:
        hi, lo = bounds(run)
        return _logit(hi) - _logit(0.0 if lo is None else lo)

    hi, lo = bounds(max(runs, key=width))  # max keeps the first (highest) of equal widths
    if lo is None:
        return hi  # the run reaches the lowest score: every case is called positive
    middle = float(1.0 / (1.0 + np.exp(-0.5 * (_logit(lo) + _logit(hi)))))
    return middle if lo < middle <= hi else hi


def _threshold_for_column(labels: np.ndarray, scores: np.ndarray, kind: str, target) -> float:
    # drop_intermediate=False: every distinct score is a candidate, so the first point that
    # reaches a sensitivity target is never dropped from a vertical run of the curve.
    from sklearn.metrics import roc_curve  # here: `cxr serve` reads thresholds, never fits

    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    finite = np.isfinite(thr)  # the first point (nobody positive) has threshold inf
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if kind == "youden":
        return _tied_middle(thr, _ties(tpr - fpr))
    if kind == "f1":
        tp, fp = tpr * n_pos, fpr * n_neg
        return _tied_middle(thr, _ties(2 * tp / (tp + fp + n_pos)))
    if kind == "sensitivity":
        # Highest threshold whose sensitivity reaches the target (best specificity given it).
        # tpr reaches 1.0 at the lowest score, so a point always exists.
        ok = np.flatnonzero(tpr >= target - 1e-12)
        return _gap_middle(thr, int(ok[0]))
    # specificity: specificity falls as the threshold falls, so the useful point is the lowest
    # threshold that still keeps specificity at the target (best sensitivity given it).
    ok = np.flatnonzero(1.0 - fpr >= target - 1e-12)
    if ok.size == 0:  # even the highest score lets a negative through
        return float(min(1.0, np.nextafter(scores.max(), np.inf)))
    return _gap_middle(thr, int(ok[-1]))


def choose_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    method: str = "youden",
    *,
    return_estimable: bool = False,
    findings: list[str] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-column operating thresholds, chosen on VALIDATION data (the caller guarantees that).

    method:
        "youden"           max sensitivity + specificity - 1 over the ROC curve;
        "f1"               max F1 over the precision-recall curve;
        "sensitivity:T"    highest threshold whose sensitivity is >= T (best specificity);
        "specificity:T"    lowest threshold whose specificity is >= T (best sensitivity).
    Among thresholds that tie on the objective, the middle of the tied interval (logit scale)
    is taken, never an end of it; a target method takes the middle of the gap between the
    chosen score and the next lower one (the same calls on validation).
    NaN labels are masked per column. For "multiclass" with two classes there is ONE threshold,
    on the positive class (cxr.decision.positive_index of `findings`; column 1 without names),
    and the other class gets 1 - t: the pair is cxr.decision's "binary" rule. With more classes
    each column is thresholded one-vs-rest, for reporting (calls are the argmax).
    A column with no positives or no negatives gets 0.5 and is flagged.

    Returns thresholds (K,) float64; with `return_estimable=True`, also a (K,) bool array that is
    False where the threshold is the 0.5 fallback because the column is not estimable.
    """
    y_true, y_score = check_labels_scores(y_true, y_score, task)
    kind, target = _parse_method(method)
    k = y_true.shape[1]
    thresholds = np.full(k, FALLBACK_THRESHOLD, dtype=np.float64)
    estimable = np.zeros(k, dtype=bool)
    binary = task == "multiclass" and k == 2
    positive = positive_index(findings) if binary and findings is not None else 1
    for j in [positive] if binary else range(k):
        labels, scores = label_column(y_true, y_score, j)
        if not is_estimable(labels):
            continue
        estimable[j] = True
        thresholds[j] = _threshold_for_column(labels, scores, kind, target)
    if binary:
        thresholds[1 - positive] = 1.0 - thresholds[positive]
        estimable[1 - positive] = estimable[positive]
    if return_estimable:
        return thresholds, estimable
    return thresholds


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


BAND_TARGETS = ("sensitivity", "specificity")


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _binary_summary(labels: np.ndarray, pred: np.ndarray, threshold: float) -> dict:
    pos = labels == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    tn = int(np.sum(~pred & ~pos))
    fn = int(np.sum(~pred & pos))
    n = tp + fp + tn + fn
    return {
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "prevalence": _ratio(tp + fn, n),
        "threshold": float(threshold),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, n),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def compute_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    findings: list[str],
    task: str,
    thresholds: np.ndarray,
) -> dict:
    """JSON-ready metrics: per-finding AUROC/AUPRC and operating-point statistics.

    Keys: "task", "findings", "n_images", "auroc" {finding: float|None}, "mean_auroc" (over
    estimable findings, None if none), "auprc", "mean_auprc", "accuracy", "per_finding"
    {finding: {n_positive, n_negative, prevalence, threshold, estimable, sensitivity, specificity,
    ppv, npv, f1, accuracy, confusion {tp, fp, tn, fn}, threshold_sensitivity_95,
    threshold_specificity_95 (None where not estimable)}}; multiclass adds "confusion_matrix"
    (K x K list, rows = true class, columns = predicted class).

    Every call is the run's decision rule (cxr.decision, stated under "decision"): per finding
    at its threshold (multilabel), one threshold on the positive class (two classes, the other
    class's threshold is 1 - t), argmax (more classes: per-class sensitivity, specificity and
    the confusion matrix are those of the argmax calls; the thresholds shown are reference).
    Accuracy: multilabel -> mean over findings of per-finding accuracy (NaN masked);
    multiclass -> share of images whose called class is the true one. Ratios with a zero
    denominator (e.g. PPV with no predicted positives) are None.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true, y_score = check_labels_scores(y_true, y_score, task)
    n, k = y_true.shape
    findings = [str(f) for f in findings]
    if len(findings) != k:
        raise ValueError(f"findings has {len(findings)} names but y_true has {k} columns")
    if len(set(findings)) != k:
        raise ValueError("findings must be unique names")
    thresholds = check_thresholds(thresholds, k)
    rule = decision_rule(task, findings, thresholds)
    calls = rule.calls(y_score)

    auroc: dict[str, float | None] = {}
    auprc: dict[str, float | None] = {}
    per_finding: dict[str, dict] = {}
    for j, name in enumerate(findings):
        labels, scores = label_column(y_true, y_score, j)
        estimable = is_estimable(labels)
        auroc[name] = float(roc_auc_score(labels, scores)) if estimable else None
        auprc[name] = float(average_precision_score(labels, scores)) if estimable else None
        known = ~np.isnan(y_true[:, j])
        summary = _binary_summary(labels, calls[known, j], rule.thresholds[j])
        summary["estimable"] = estimable
        # The two standard operating points around the chosen one: the web app shows scores
        # between them as "possible" (the borderline band) rather than a firm call.
        for kind in BAND_TARGETS:
            summary[f"threshold_{kind}_95"] = (
                _threshold_for_column(labels, scores, kind, 0.95) if estimable else None
            )
        per_finding[name] = summary

    out: dict = {
        "task": task,
        "findings": findings,
        "n_images": int(n),
        "auroc": auroc,
        "mean_auroc": _mean_or_none(list(auroc.values())),
        "auprc": auprc,
        "mean_auprc": _mean_or_none(list(auprc.values())),
    }
    if task == "multilabel":
        out["accuracy"] = _mean_or_none([s["accuracy"] for s in per_finding.values()])
    else:
        true_class = y_true.argmax(axis=1)
        pred_class = calls.argmax(axis=1)  # exactly one call per image
        out["accuracy"] = float(np.mean(pred_class == true_class))
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (true_class, pred_class), 1)
        out["confusion_matrix"] = matrix.tolist()
    out["per_finding"] = per_finding
    out["decision"] = rule.to_json()
    return out


def metric_intervals(
    metrics: dict,
    y_true: np.ndarray,
    y_score: np.ndarray,
    patients: list[str] | None,
    n_boot: int = 300,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """95% patient-bootstrap intervals (cxr.bootstrap) of each finding's AUROC and of the
    sensitivity and specificity of the calls `metrics` made (its decision rule), for the model
    card. JSON-ready: {"method", "n_boot", "alpha", "seed", "n_patients", "per_finding":
    {finding: {"auroc"|"sensitivity"|"specificity": {estimate, low, high, n_valid, n_boot}}}};
    all None where not estimable (e.g. no positives)."""
    y_true, y_score = check_labels_scores(y_true, y_score, metrics["task"])
    findings = metrics["findings"]
    thresholds = [metrics["per_finding"][f]["threshold"] for f in findings]
    rule = decision_rule(metrics["task"], findings, check_thresholds(thresholds, len(findings)))
    calls = rule.calls(y_score).astype(np.float64)
    statistics = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(y_true[:, j])
        labels = y_true[known, j].astype(np.int64)
        statistics[name] = binary_statistics(labels, y_score[known, j], mask=known)
        # the calls as 0/1 scores, called at 0.5: the rule's own sensitivity and specificity
        statistics[f"{name}|call"] = binary_statistics(labels, calls[known, j], {"at": 0.5}, known)
    intervals = bootstrap_intervals(statistics, len(y_true), patients, n_boot, alpha, seed)
    return {
        "method": "patient bootstrap" if patients is not None else "image bootstrap",
        "n_boot": n_boot,
        "alpha": alpha,
        "seed": seed,
        "n_patients": len(set(patients)) if patients is not None else len(y_true),
        "per_finding": {
            name: {
                "auroc": intervals[f"{name}|auroc"].as_dict(),
                "sensitivity": intervals[f"{name}|call|at|sensitivity"].as_dict(),
                "specificity": intervals[f"{name}|call|at|specificity"].as_dict(),
            }
            for name in findings
        },
    }


# ---------------------------------------------------------------------------------------------
# Text table
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, width: int, digits: int = 3) -> str:
    text = "n/e" if value is None else f"{value:.{digits}f}"
    return text.rjust(width)


def format_table(metrics: dict) -> str:
    """Plain-text table per finding: AUROC, AUPRC, n_pos, threshold, sens, spec, PPV, NPV."""
    for key in ("auroc", "auprc", "per_finding"):
        if key not in metrics:
            raise ValueError(f"metrics must come from compute_metrics (missing key {key!r})")
    names = list(metrics["per_finding"])
    width = max([len("finding"), len("mean"), *(len(n) for n in names)])
    cols = ["AUROC", "AUPRC", "n_pos", "thr", "sens", "spec", "PPV", "NPV"]
    header = "finding".ljust(width) + "".join(c.rjust(8) for c in cols)
    rule = "-" * len(header)
    lines = [header, rule]
    for name in names:
        pf = metrics["per_finding"][name]
        lines.append(
            name.ljust(width)
            + _fmt(metrics["auroc"].get(name), 8)
            + _fmt(metrics["auprc"].get(name), 8)
            + str(pf["n_positive"]).rjust(8)
            + _fmt(pf["threshold"], 8)
            + _fmt(pf["sensitivity"], 8)
            + _fmt(pf["specificity"], 8)
            + _fmt(pf["ppv"], 8)
            + _fmt(pf["npv"], 8)
        )
    any_not_estimable = any("n/e" in line for line in lines[2:])
    lines.append(rule)
    lines.append(
        "mean".ljust(width)
        + _fmt(metrics.get("mean_auroc"), 8)
        + _fmt(metrics.get("mean_auprc"), 8)
    )
    if "accuracy" in metrics:
        n_images = metrics.get("n_images")
        suffix = f" on {n_images} images" if n_images is not None else ""
        lines.append(f"accuracy {_fmt(metrics['accuracy'], 0).strip()}{suffix}")
    if any_not_estimable:
        lines.append(
            "n/e = not estimable: AUROC/AUPRC need positives and negatives, a rate needs a\n"
            "nonzero denominator. Means are over estimable findings."
        )
    return "\n".join(lines)
