"""`cxr adapt`: a run adjusted to a new site's finding prevalence, from unlabelled images.

A model's calibrated probabilities carry the prevalence of the data it was calibrated on (its
validation split). At a site where a finding is rarer or commoner, the same image should get a
different probability (label shift: p(x | y) unchanged, p(y) changed). The EM algorithm of
Saerens, Latinne & Decaestecker (Neural Computation 2002) estimates the new priors from the
model's posteriors on unlabelled images of the new site alone:

    repeat: q_i = p_i * (pi_new / pi_old), normalised per image;  pi_new = mean_i q_i

(per finding as a two-class problem for multi-label models, over the classes for softmax).
EM needs posteriors calibrated at the validation prevalence, and temperature scaling alone can
leave a bias (a model that gives most images a high pneumonia probability, with a high Youden
threshold, is well ranked but not calibrated). So the posteriors are first recalibrated with
bias-corrected temperature scaling (one T and one bias per output, fitted on the run's
validation split: Alexandari, Kundaje & Shrikumar, ICML 2020, found EM on such posteriors hard
to beat for label shift). The adjustment is then Bayes' rule: every calibrated logit moves by
log(pi_new / pi_old) (a logit shift of logit(pi_new) - logit(pi_old) per finding). It is
written into the copy of the run as a shift of its final layer's bias (T x the calibrated
shift), with the bias-corrected T in its calibration.json, so predict, serve, evaluate, report
and export all use it with no special case.

Thresholds: "keep" (default) moves them with the shift, so each finding's sensitivity and
specificity stay what validation measured (Youden's J does not depend on prevalence) while the
probabilities shown mean the new site's; "bayes" puts them at 0.5 on the adjusted probabilities
(fewest errors at the new prevalence, at the cost of the validated operating point).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from cxr.calibration import (
    apply_temperature,
    calibration_summary,
    load_calibration,
    model_fingerprint,
    negative_log_likelihood,
    save_calibration,
    validation_images,
)
from cxr.checkpoint import save_weights, write_json
from cxr.data.cache import build_cache
from cxr.data.image_io import IMAGE_EXTENSIONS
from cxr.data.prepare import resolve_table
from cxr.data.table import ImageTable
from cxr.decision import decision_rule
from cxr.errors import ConfigError, CxrError, DataError
from cxr.metrics import compute_metrics
from cxr.run import RunDir, load_run
from cxr.runtime import forward, select_runtime

__all__ = [
    "THRESHOLD_MODES",
    "adaptation_before_after",
    "adapt_run",
    "compare_on_labelled",
    "em_priors",
    "prior_shift",
]

THRESHOLD_MODES = ("keep", "bayes")
_PRIOR_CLIP = 1e-4  # a prior of exactly 0 or 1 cannot move


def em_priors(
    probs: np.ndarray, train_priors: np.ndarray, tol: float = 1e-8, max_iter: int = 10_000
) -> tuple[np.ndarray, int]:
    """Saerens et al. 2002 EM: new class priors (K,) from posteriors (N, K) rows summing to 1
    made under `train_priors` (K,). Returns (priors, iterations)."""
    probs = np.asarray(probs, dtype=np.float64)
    old = np.clip(np.asarray(train_priors, dtype=np.float64), _PRIOR_CLIP, 1.0)
    if probs.ndim != 2 or probs.shape[1] != len(old) or len(probs) == 0:
        raise ValueError(f"posteriors {probs.shape} must be (N > 0, {len(old)})")
    new = old.copy()
    for iteration in range(1, max_iter + 1):
        q = probs * (new / old)
        q /= q.sum(axis=1, keepdims=True)
        updated = q.mean(axis=0)
        if np.max(np.abs(updated - new)) < tol:
            return updated, iteration
        new = updated
    return new, max_iter


def prior_shift(probs: np.ndarray, train_priors: np.ndarray, task: str) -> dict:
    """New priors and the calibrated-logit shift for each output (K,).

    multilabel: per finding, two-class EM on (1 - p, p); shift = logit(new) - logit(old).
    multiclass: EM over the classes; shift = log(new / old) (softmax ignores a common offset).
    """
    probs = np.asarray(probs, dtype=np.float64)
    old = np.clip(np.asarray(train_priors, dtype=np.float64), _PRIOR_CLIP, 1.0 - _PRIOR_CLIP)
    if task == "multiclass":
        new, _ = em_priors(probs, old / old.sum())
        new = np.clip(new, _PRIOR_CLIP, 1.0)
        shift = np.log(new) - np.log(old)
    else:
        new = np.empty_like(old)
        for j in range(len(old)):
            two, _ = em_priors(np.stack([1 - probs[:, j], probs[:, j]], 1), [1 - old[j], old[j]])
            new[j] = np.clip(two[1], _PRIOR_CLIP, 1.0 - _PRIOR_CLIP)
        shift = _logit(new) - _logit(old)
    return {"before": old, "after": new, "shift": shift}


def fit_bias_corrected(logits: np.ndarray, y: np.ndarray, task: str) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling: (T, b) minimising the NLL of logits / T + b on
    labelled (validation) data; b has one entry per output."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k = logits.shape[1]
    known = ~np.isnan(y)

    def nll(params: np.ndarray) -> float:
        z = logits / np.exp(params[0]) + params[1:]
        if task == "multiclass":
            return float(np.mean(logsumexp(z, axis=1) - np.sum(z * y, axis=1)))
        sign = 2.0 * y[known] - 1.0
        return float(np.mean(np.logaddexp(0.0, -sign * z[known])))

    start = np.zeros(k + 1)
    result = minimize(
        nll, start, method="L-BFGS-B", bounds=[(np.log(0.05), np.log(20.0))] + [(-20.0, 20.0)] * k
    )
    bias = result.x[1:] - (result.x[1:].mean() if task == "multiclass" else 0.0)
    return float(np.exp(result.x[0])), bias


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _moved_thresholds(thresholds: np.ndarray, shift: np.ndarray, task: str) -> np.ndarray:
    """Thresholds that keep every call unchanged after logits move by `shift` (the scale of
    `thresholds`). A softmax column's probability moves with its logit minus the other's for
    two classes; with more classes no single threshold does that, and they are kept."""
    t = np.clip(thresholds, 1e-12, 1 - 1e-12)
    if task == "multilabel":
        return _sigmoid(_logit(t) + shift)
    if len(shift) == 2:
        return _sigmoid(_logit(t) + (shift - shift[::-1]))
    return thresholds


def unlabelled_images(folder: str | Path, run, progress: bool = True):
    """The run's preprocessing of every image under `folder` (recursively), as CachedImages."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError("not a folder of images", path=str(root))
    files = sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DataError(
            f"no image files found (looked for {sorted(IMAGE_EXTENSIONS)})", path=str(root)
        )
    k = len(run.findings)
    table = ImageTable(
        files,
        np.full((len(files), k), np.nan),
        run.findings,
        run.task,
        files,
        source=f"unlabelled images in {root}",
    )
    cfg = run.config
    return build_cache(table, cfg.preprocess, cfg.train.cache_dir, skip_bad=True, progress=progress)


def adapt_run(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    thresholds: str = "keep",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Copy the run to `out` with probabilities and thresholds adjusted to the prevalence EM
    estimates on the unlabelled images in `data`; returns (and saves as out/adapt.json) the
    priors before and after and the shift applied."""
    if thresholds not in THRESHOLD_MODES:
        raise ConfigError(f"--thresholds must be one of {THRESHOLD_MODES}, got {thresholds!r}")
    src, out = Path(run_dir), Path(out)
    if RunDir(out).config.exists():
        raise CxrError(f"{out} already holds a run; choose another --out")
    rt = select_runtime(device)
    run = load_run(src, rt.device)
    calibration = load_calibration(src)
    if calibration is None:
        raise CxrError(
            f"{src} has no calibration.json for its weights: run "
            f"`cxr calibrate --model {src}` first"
        )

    val = validation_images(run, progress)
    val_y = val.table.labels
    old = np.nanmean(val_y, axis=0)  # the prevalence the posteriors are calibrated at
    val_logits, _ = forward(run.model, val.pixels, rt, progress=progress, desc="validation")
    bct_t, bct_b = fit_bias_corrected(val_logits, val_y, run.task)
    images = unlabelled_images(data, run, progress)
    if len(images.table) == 0:
        raise DataError("no readable image to estimate the prevalence from", path=str(data))
    logits, _ = forward(run.model, images.pixels, rt, progress=progress, desc="new site")
    probs = apply_temperature(logits / bct_t + bct_b, run.task, 1.0)
    shift = prior_shift(probs, old, run.task)
    # The adapted run's calibrated logit is logits / bct_t + bct_b + shift: its temperature is
    # bct_t and its raw logits move by bct_t * (bct_b + shift), a bias of the final layer.
    raw_shift = bct_t * (bct_b + shift["shift"])

    shutil.copytree(
        src,
        out,
        ignore=shutil.ignore_patterns(
            "checkpoints", "report", "model.onnx", "model.onnx.json", "*.tmp"
        ),
    )
    files = RunDir(out)
    with torch.no_grad():
        bias = run.model.head.bias
        bias += torch.as_tensor(raw_shift, dtype=bias.dtype, device=bias.device)
    save_weights(run.model, files.weights)

    info = json.loads(files.model_json.read_text())
    raw_t = run.thresholds
    if thresholds == "bayes":
        new_raw = np.full_like(raw_t, 0.5)
    else:
        new_raw = _moved_thresholds(raw_t, raw_shift, run.task)
    rule = decision_rule(run.task, run.findings, new_raw)
    info["thresholds"] = {f: float(t) for f, t in zip(run.findings, rule.thresholds, strict=True)}
    info["decision"] = rule.to_json()
    summary = {
        "source_run": str(src.resolve()),
        "unlabelled_data": str(Path(data).resolve()),
        "n_images": int(len(images.table)),
        "n_skipped": len(images.skipped),
        "method": "EM prior adjustment (Saerens, Latinne & Decaestecker 2002) on calibrated "
        "probabilities",
        "temperature_before": float(calibration.temperature),
        "thresholds": thresholds,
        "prevalence_before": dict(zip(run.findings, map(float, shift["before"]), strict=True)),
        "prevalence_after": dict(zip(run.findings, map(float, shift["after"]), strict=True)),
        "prior_logit_shift": dict(zip(run.findings, map(float, shift["shift"]), strict=True)),
        "bias_corrected_calibration": {"temperature": bct_t, "bias": bct_b.tolist()},
        "raw_logit_shift": dict(zip(run.findings, map(float, raw_shift), strict=True)),
        "mean_probability_before": dict(zip(run.findings, map(float, probs.mean(0)), strict=True)),
    }
    info["prior_adjustment"] = summary
    write_json(files.model_json, info)
    new_cal = calibration.threshold_array(run.findings)
    if run.task == "multilabel" or len(run.findings) == 2:  # the calls of new_raw, on p^(1/T)
        new_cal = _sigmoid(_logit(np.clip(new_raw, 1e-12, 1 - 1e-12)) / bct_t)
    calibration.temperature = bct_t
    calibration.method += "; bias-corrected for the new site's prevalence (cxr adapt)"
    cal_rule = decision_rule(run.task, run.findings, new_cal)
    calibration.thresholds = {
        f: float(t) for f, t in zip(run.findings, cal_rule.thresholds, strict=True)
    }
    calibration.decision = cal_rule.to_json()
    calibration.model_sha256 = model_fingerprint(out)
    calibration.threshold_method += f"; moved for the new site's prevalence ({thresholds})"
    save_calibration(out, calibration)
    write_json(out / "adapt.json", summary)
    return summary


def compare_on_labelled(
    before: str | Path, after: str | Path, data, device: str = "auto", progress: bool = True
) -> dict:
    """The calibrated probabilities of both runs on labelled images: NLL, ECE, mean probability
    against the observed prevalence, and accuracy at each run's calibrated thresholds."""
    rt = select_runtime(device)
    out = {}
    for name, run_dir in (("before", before), ("after", after)):
        run = load_run(run_dir, rt.device)
        calibration = load_calibration(run_dir)
        t = calibration.temperature if calibration is not None else 1.0
        thresholds = (
            calibration.threshold_array(run.findings) if calibration is not None else run.thresholds
        )
        table = resolve_table(data, run.config.train.cache_dir, progress)
        if table.findings != run.findings or table.task != run.task:
            raise DataError(
                f"labels {table.findings} do not match the model's {run.findings}", path=data.path
            )
        images = build_cache(
            table,
            run.config.preprocess,
            run.config.train.cache_dir,
            data.skip_bad,
            progress=progress,
        )
        logits, _ = forward(run.model, images.pixels, rt)
        y = images.table.labels
        probs = apply_temperature(logits, run.task, t)
        metrics = compute_metrics(y, probs, run.findings, run.task, thresholds)
        out[name] = {
            "nll": negative_log_likelihood(logits, y, run.task, t),
            "ece": calibration_summary(y, probs, run.task, run.findings)["ece"],
            "mean_probability": dict(zip(run.findings, map(float, probs.mean(0)), strict=True)),
            "prevalence": dict(zip(run.findings, map(float, np.nanmean(y, 0)), strict=True)),
            "accuracy": metrics["accuracy"],
            "mean_auroc": metrics["mean_auroc"],
            "per_finding": {
                f: {
                    k: metrics["per_finding"][f].get(k)
                    for k in ("auroc", "threshold", "sensitivity", "specificity")
                }
                for f in run.findings
            },
        }
    return out


def adaptation_before_after(
    adapted: str | Path, data, device: str = "auto", progress: bool = True
) -> dict:
    """`cxr report` on an adapted run with the new site's labelled images: the source run
    (adapt.json's source_run) against the adapted one on them. AUROC is unchanged by design
    (a monotone shift per finding); calibration (NLL, ECE), the calls at each run's operating
    points (sensitivity, specificity, accuracy) and the prevalence (validation, estimated by EM
    from the unlabelled images, observed in the labels) are what moved."""
    adapted = Path(adapted)
    summary = json.loads((adapted / "adapt.json").read_text())
    source = Path(summary["source_run"])
    if not RunDir(source).is_finished():
        raise CxrError(
            f"{adapted}/adapt.json names the source run {source}, which is not there any more: "
            "the before/after comparison needs it"
        )
    both = compare_on_labelled(source, adapted, data, device, progress)
    findings = list(summary["prevalence_after"])
    return {
        "source_run": str(source),
        "adapted_run": str(adapted),
        "unlabelled_data": summary["unlabelled_data"],
        "n_unlabelled": summary["n_images"],
        "thresholds": summary["thresholds"],
        "method": summary["method"],
        "before": {k: both["before"][k] for k in ("nll", "ece", "accuracy", "mean_auroc")},
        "after": {k: both["after"][k] for k in ("nll", "ece", "accuracy", "mean_auroc")},
        "findings": {
            f: {
                "prevalence_validation": summary["prevalence_before"][f],
                "prevalence_estimated": summary["prevalence_after"][f],
                "prevalence_observed": both["after"]["prevalence"][f],
                "mean_probability_before": both["before"]["mean_probability"][f],
                "mean_probability_after": both["after"]["mean_probability"][f],
                "before": both["before"]["per_finding"][f],
                "after": both["after"]["per_finding"][f],
            }
            for f in findings
        },
    }
