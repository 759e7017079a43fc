"""What `GET /api/model` answers: the run's findings, thresholds, training data, validation
metrics, calibration and a short model card, read once at start-up (no request runs the model).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.errors import CxrError


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _interval(found: dict | None) -> list[float] | None:
    """[low, high] of a cxr.bootstrap interval; None where it was not estimable."""
    if not found or found.get("low") is None or found.get("high") is None:
        return None
    return [found["low"], found["high"]]


def metrics_summary(metrics: dict | None) -> dict | None:
    """The few numbers a person reads: AUROC, sensitivity and specificity at the threshold,
    positives per finding, and their 95% intervals when training computed them (runs trained
    before that have `intervals` None: "not computed")."""
    if not metrics:
        return None
    per = metrics.get("per_finding", {})
    intervals = metrics.get("intervals") or {}
    ci = intervals.get("per_finding", {})
    return {
        "n_images": metrics.get("n_images"),
        "mean_auroc": metrics.get("mean_auroc"),
        "accuracy": metrics.get("accuracy"),
        "intervals": (
            {
                "method": intervals.get("method", "patient bootstrap"),
                "n_boot": intervals.get("n_boot"),
                "level": 1 - intervals.get("alpha", 0.05),
            }
            if intervals
            else None
        ),
        "per_finding": {
            f: {
                "auroc": metrics.get("auroc", {}).get(f),
                "sensitivity": per.get(f, {}).get("sensitivity"),
                "specificity": per.get(f, {}).get("specificity"),
                "n_positive": per.get(f, {}).get("n_positive"),
                "n_negative": per.get(f, {}).get("n_negative"),
                "auroc_ci": _interval(ci.get(f, {}).get("auroc")),
                "sensitivity_ci": _interval(ci.get(f, {}).get("sensitivity")),
                "specificity_ci": _interval(ci.get(f, {}).get("specificity")),
            }
            for f in metrics.get("findings", list(per))
        },
    }


def _calibration(run_dir: Path) -> dict | None:
    """The run's temperature scaling (calibration.json), if it has one and this install knows it."""
    try:
        from cxr.calibration import load_calibration
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stale files are reported by the Predictor
            found = load_calibration(run_dir)
    except CxrError:
        return None
    if found is None:
        return None
    keep = (
        "temperature",
        "ece_before",
        "ece_after",
        "n_images",
        "fitted_on",
        "method",
        "threshold_method",
        "thresholds",
    )
    return {k: getattr(found, k) for k in keep if hasattr(found, k)}


def _without_paths(value, key: str = ""):
    """Server paths are not the client's business: a path keeps its last part only."""
    if isinstance(value, dict):
        return {k: _without_paths(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v, key) for v in value]
    absolute = isinstance(value, str) and (value.startswith(("/", "~")) or value[1:2] == ":")
    if isinstance(value, str) and (key.endswith("path") or absolute):
        return Path(value.replace("\\", "/").rstrip("/")).name
    return value


def model_info(run_dir: Path, predictor, gate, gate_note: str) -> dict:
    """What GET /api/model answers, read once at start-up (no request touches the model)."""
    run = predictor.run
    info = run.info
    data = _without_paths(info.get("training_data") or {})
    source = data.get("source") or data.get("path") or "unknown data"
    n_train = data.get("n_train")
    trained_on = f"{n_train} images from {source}" if n_train else f"images from {source}"
    calibration = _calibration(run_dir)
    decision = predictor.engine.info.decision.to_json()  # the rule every call here uses
    thresholds = decision["thresholds"]  # the engine's (calibrated when the run is)
    return {
        "name": run_dir.name,
        "version": __version__,
        "arch": run.config.model.arch,
        "task": run.task,
        "findings": list(run.findings),
        "thresholds": thresholds,
        "threshold_method": info.get("threshold_method", "chosen on the validation split"),
        "decision": decision,
        "image_size": run.config.preprocess.image_size,
        "preprocess": run.config.preprocess.model_dump(),
        "training_data": data,
        "best_epoch": info.get("best_epoch"),
        "metrics": {
            "validation": metrics_summary(_read_json(run_dir / "val_metrics.json")),
            "test": metrics_summary(_read_json(run_dir / "test_metrics.json")),
        },
        "ood_gate": {"enabled": gate is not None, "note": gate_note},
        "calibration": calibration,
        "model_card": {
            "intended_use": (
                "Research and teaching: exploring how a ResNet classifier responds to a chest "
                "radiograph, with Grad-CAM showing where it looked."
            ),
            "not_for": "Diagnosis, triage, screening or any treatment decision.",
            "training_data": f"Trained on {trained_on}.",
            "limitations": (
                "Validated only on a held-out part of its own training source; accuracy on "
                "other hospitals, devices, ages or projections is unknown. Thresholds were "
                "chosen on the validation split. Grad-CAM shows where the network's evidence "
                "lies, not where disease is."
            ),
        },
        "notice": NOT_A_MEDICAL_DEVICE,
    }
