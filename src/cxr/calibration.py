"""Calibration: expected calibration error, reliability diagrams and temperature scaling.

Temperature scaling (Guo et al., ICML 2017) divides every logit by one scalar T > 0 before the
sigmoid or softmax. T is fitted by minimising the negative log-likelihood on the run's
VALIDATION split only, and saved in the run folder as `calibration.json`, with the
thresholds re-chosen (Youden's J) on the calibrated validation probabilities.

One scale everywhere: where calibration.json exists, `cxr.inference.predictor.Predictor` (hence
`cxr predict` and `cxr serve`) and `cxr report` give calibrated probabilities and compare them
with these calibrated thresholds. For sigmoid outputs and two-class softmax the calibrated
probability is a strictly increasing function of the raw one, so the calls (positive or not)
are the same as with the raw probabilities at model.json's thresholds; `cxr evaluate` reports
the raw model on the raw scale.

ECE uses 15 equal-width bins: sum over bins of (share of cases in the bin) x |observed
frequency - mean predicted probability|. Multilabel: all labelled (image, finding) pairs pooled,
and per finding; multiclass: the top-label (confidence of the predicted class) ECE.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logsumexp, softmax

from cxr.checkpoint import write_json
from cxr.data.cache import CachedImages, build_cache
from cxr.data.prepare import resolve_table
from cxr.decision import decision_rule
from cxr.errors import CxrError, DataError
from cxr.metrics import TASKS, choose_thresholds
from cxr.run import LoadedRun, RunDir, load_run, split_keys
from cxr.runtime import forward, select_runtime

N_BINS = 15
CALIBRATION_FILE = "calibration.json"  # RunDir.calibration's name, for messages
T_BOUNDS = (0.05, 20.0)  # a T outside this means a broken model or split, not miscalibration
_EPS = 1e-7  # clip for probabilities turned back into logits (float32 sigmoid saturates ~1e-7)


# ---------------------------------------------------------------------------------------------
# ECE and reliability diagrams
# ---------------------------------------------------------------------------------------------


def _binary(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if labels.shape != probs.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must match")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1 (mask unknown labels first)")
    if probs.size and (not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return labels, probs


def reliability_bins(labels, probs, n_bins: int = N_BINS) -> dict:
    """Per equal-width bin: mean predicted probability, observed frequency, count.

    Bins without cases have None for confidence and frequency. Returns
    {"edges" (n_bins + 1), "confidence", "frequency", "count", "n"}.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    labels, probs = _binary(labels, probs)
    index = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=probs, minlength=n_bins)
    pos_sum = np.bincount(index, weights=labels, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count, strict=True)],
        "frequency": [float(p / n) if n else None for p, n in zip(pos_sum, count, strict=True)],
        "count": count.astype(int).tolist(),
        "n": int(count.sum()),
    }


def expected_calibration_error(labels, probs, n_bins: int = N_BINS) -> float | None:
    """Binary ECE of probabilities for label 1; None when there are no cases."""
    bins = reliability_bins(labels, probs, n_bins)
    if bins["n"] == 0:
        return None
    total = 0.0
    for conf, freq, count in zip(bins["confidence"], bins["frequency"], bins["count"], strict=True):
        if count:
            total += count * abs(freq - conf)
    return float(total / bins["n"])


def _pairs(y_true: np.ndarray, probs: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """The (label, probability) pairs the overall ECE is computed on (see module docstring)."""
    if task == "multiclass":
        predicted = probs.argmax(axis=1)
        correct = (y_true.argmax(axis=1) == predicted).astype(np.float64)
        return correct, probs.max(axis=1)
    known = ~np.isnan(y_true)
    return y_true[known], probs[known]


def calibration_summary(
    y_true, probs, task: str, findings: list[str], n_bins: int = N_BINS
) -> dict:
    """{"ece": overall, "per_finding": {name: ECE or None}, "reliability": overall bins}."""
    _check_task(task)
    y_true = np.asarray(y_true, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or y_true.ndim != 2 or y_true.shape[1] != len(findings):
        raise ValueError(
            f"labels {y_true.shape} and probabilities {probs.shape} must both be (N, "
            f"{len(findings)})"
        )
    labels, scores = _pairs(y_true, probs, task)
    per_finding = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(y_true[:, j])
        per_finding[name] = expected_calibration_error(y_true[known, j], probs[known, j], n_bins)
    return {
        "ece": expected_calibration_error(labels, scores, n_bins),
        "per_finding": per_finding,
        "reliability": reliability_bins(labels, scores, n_bins),
        "kind": "top-label" if task == "multiclass" else "all labelled (image, finding) pairs",
    }


# ---------------------------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _check_logits(logits, y_true) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    if logits.ndim != 2 or logits.shape != y_true.shape:
        raise ValueError(
            f"logits {logits.shape} and labels {y_true.shape} must be 2-D (N, K) and match"
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite")
    return logits, y_true


def negative_log_likelihood(logits, y_true, task: str, temperature: float = 1.0) -> float:
    """Mean NLL of labels under logits / T: BCE over labelled entries, or softmax cross-entropy."""
    _check_task(task)
    logits, y_true = _check_logits(logits, y_true)
    z = logits / float(temperature)
    if task == "multiclass":
        return float(np.mean(logsumexp(z, axis=1) - np.sum(z * y_true, axis=1)))
    known = ~np.isnan(y_true)
    if not known.any():
        raise ValueError("no labelled entries to compute a likelihood on")
    sign = 2.0 * y_true[known] - 1.0
    return float(np.mean(np.logaddexp(0.0, -sign * z[known])))


def fit_temperature(logits, y_true, task: str) -> float:
    """The T in T_BOUNDS minimising the validation NLL of logits / T (bounded Brent on log T).

    The NLL is convex in 1/T, so the 1-D minimum found is the global one.
    """
    _check_task(task)
    logits, y_true = _check_logits(logits, y_true)
    if task == "multilabel" and not np.any(~np.isnan(y_true)):
        raise ValueError("no labelled entries to fit a temperature on")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, y_true, task, float(np.exp(log_t))),
        bounds=(np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def logits_from_probabilities(probs, task: str) -> np.ndarray:
    """Logits that give back `probs`: logit(p) for sigmoid, log(p) for softmax (up to a shift)."""
    _check_task(task)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p) if task == "multilabel" else np.log(p)


def apply_temperature(
    values, task: str, temperature: float, *, inputs: str = "logits"
) -> np.ndarray:
    """Calibrated probabilities (N, K) from logits (default) or from raw probabilities.

    inputs="probabilities" first maps probabilities back to logits (clipped at 1e-7 from 0 and
    1, as float32 sigmoids saturate there), then divides by T.
    """
    _check_task(task)
    if inputs not in ("logits", "probabilities"):
        raise ValueError(f"inputs must be 'logits' or 'probabilities', got {inputs!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    values = np.asarray(values, dtype=np.float64)
    logits = values if inputs == "logits" else logits_from_probabilities(values, task)
    z = logits / float(temperature)
    return expit(z) if task == "multilabel" else softmax(z, axis=1)


def log_probabilities(logits, task: str, temperature: float = 1.0) -> np.ndarray:
    """log of apply_temperature's output, computed stably (for likelihood reports)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return -np.logaddexp(0.0, -z) if task == "multilabel" else log_softmax(z, axis=1)


# ---------------------------------------------------------------------------------------------
# The run's calibration.json
# ---------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """What calibration.json holds (all fitted on the run's validation split)."""

    temperature: float
    thresholds: dict[str, float]  # Youden's J on calibrated validation probabilities
    n_images: int
    nll_before: float
    nll_after: float
    ece_before: float | None
    ece_after: float | None
    model_sha256: str
    decision: dict | None = None  # cxr.decision's rule at these thresholds (None: older file)
    fitted_on: str = "validation split of the run (split.csv)"
    threshold_method: str = "youden on calibrated validation probabilities"
    method: str = "temperature scaling: one T for all outputs, validation NLL minimised"
    leakage: dict | None = None  # validation images also in train, fitted on under --allow-overlap

    def threshold_array(self, findings: list[str]) -> np.ndarray:
        missing = [f for f in findings if f not in self.thresholds]
        if missing:
            raise CxrError(f"{CALIBRATION_FILE} has no threshold for {missing}")
        return np.array([self.thresholds[f] for f in findings], dtype=np.float64)


def model_fingerprint(run_dir: str | Path) -> str:
    """sha256 of model.safetensors: calibration.json belongs to exactly these weights."""
    digest = hashlib.sha256()
    with open(RunDir(run_dir).weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_calibration(run_dir: str | Path, calibration: Calibration) -> Path:
    path = RunDir(run_dir).calibration
    write_json(path, asdict(calibration))
    return path


def load_calibration(run_dir: str | Path) -> Calibration | None:
    """The run's calibration, or None when it has none or it was fitted for other weights."""
    path = RunDir(run_dir).calibration
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        calibration = Calibration(**raw)
        temperature = float(calibration.temperature)
    except (ValueError, TypeError) as exc:
        raise DataError(f"malformed calibration file ({exc})", path=str(path)) from None
    if not (np.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be positive, got {temperature}", path=str(path))
    if calibration.model_sha256 != model_fingerprint(run_dir):
        warnings.warn(
            f"{path} was fitted for other weights (model.safetensors changed); ignored. "
            f"Refit with `cxr calibrate --model {run_dir}`",
            stacklevel=2,
        )
        return None
    return calibration


# ---------------------------------------------------------------------------------------------
# Logits of a run on cached images, and its validation split
# ---------------------------------------------------------------------------------------------


def require_validation_split(run: LoadedRun) -> None:
    """Before any work: the run has validation images (an imported model has none)."""
    if run.files.split.is_file() and not split_keys(run.run_dir, "val"):
        raise DataError(
            "the run has no validation images (an imported model: its thresholds are its "
            "library's operating points, model.json). Measure it with `cxr evaluate`; for "
            "operating points, calibration and the report, fine-tune it on local labelled data "
            "first (`cxr train --pretrained RUN`)",
            path=str(run.files.split),
        )


def validation_images(run: LoadedRun, progress: bool = True) -> CachedImages:
    """The run's validation images (CachedImages), rebuilt from config.json and split.csv.

    Operating points and the temperature come from these images only, never from the data a
    report evaluates.
    """
    cfg = run.config
    require_validation_split(run)
    try:
        table = resolve_table(cfg.data, cfg.train.cache_dir, progress)
    except DataError as exc:
        raise DataError(
            f"cannot rebuild the run's validation split from its training data "
            f"(config.json data.path {cfg.data.path!r}; run from the folder the run was trained "
            f"in): {exc}",
            path=str(run.files.config),
        ) from None
    if table.findings != run.findings or table.task != run.task:
        raise DataError(
            f"the training data now has {table.task} labels {table.findings}, the model "
            f"{run.task} labels {run.findings}",
            path=cfg.data.path,
        )
    wanted = split_keys(run.run_dir, "val")
    index = [i for i, key in enumerate(table.keys) if key in wanted]
    if not index:
        raise DataError(
            f"none of the run's validation images (split.csv) are in {cfg.data.path!r}; run from "
            "the folder the run was trained in",
            path=str(run.files.split),
        )
    return build_cache(
        table.subset(index),
        cfg.preprocess,
        cfg.train.cache_dir,
        cfg.data.skip_bad,
        progress=progress,
    )


def fit_calibration(
    run_dir: str | Path, logits: np.ndarray, y_true: np.ndarray, task: str, findings: list[str]
) -> Calibration:
    """Temperature and calibrated Youden thresholds from VALIDATION logits and labels."""
    temperature = fit_temperature(logits, y_true, task)
    raw = apply_temperature(logits, task, 1.0)
    calibrated = apply_temperature(logits, task, temperature)
    thresholds = choose_thresholds(y_true, calibrated, task, "youden", findings=findings)
    return Calibration(
        temperature=temperature,
        thresholds={f: float(t) for f, t in zip(findings, thresholds, strict=True)},
        decision=decision_rule(task, findings, thresholds).to_json(),
        n_images=int(len(logits)),
        nll_before=negative_log_likelihood(logits, y_true, task, 1.0),
        nll_after=negative_log_likelihood(logits, y_true, task, temperature),
        ece_before=calibration_summary(y_true, raw, task, findings)["ece"],
        ece_after=calibration_summary(y_true, calibrated, task, findings)["ece"],
        model_sha256=model_fingerprint(run_dir),
    )


def calibrate_run(
    run_dir: str | Path, progress: bool = True, device: str = "auto", allow_overlap: bool = False
) -> Calibration:
    """Fit T on the run's validation split and save calibration.json in the run folder.

    Validation images that are also training images (same image name or identical pixels,
    cxr.data.leakage) are refused unless allow_overlap, and then calibration.json says so.
    """
    from cxr.data.leakage import check_overlap, find_overlap, pixel_hashes

    rt = select_runtime(device)
    run = load_run(run_dir, rt.device)
    images = validation_images(run, progress)
    overlap = find_overlap(images.table, run_dir, pixel_hashes(images.pixels), ("train",))
    check_overlap(overlap, allow_overlap, "calibrate")
    logits, _ = forward(run.model, images.pixels, rt, progress=progress, desc="validation")
    calibration = fit_calibration(run_dir, logits, images.table.labels, run.task, run.findings)
    if overlap.n_images:
        calibration.leakage = overlap.as_dict()
    save_calibration(run_dir, calibration)
    return calibration
