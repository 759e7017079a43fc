"""`cxr ensemble`: several finished runs -> one run folder whose model averages their logits.

The members must have been trained on one split (identical split.csv) with one preprocessing,
findings and task: then the ensemble's validation split is theirs, never seen by any member in
training, and the operating thresholds and the temperature are refitted on it for the averaged
logits (the members' own thresholds and temperatures do not carry over to their mean). The
result is an ordinary run folder (config.json with model.arch "ensemble", model.json,
model.safetensors holding every member, split.csv, calibration.json, val_metrics.json) that
evaluate, report, predict, serve, export and ood-fit take like any run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cxr.calibration import fit_calibration, save_calibration, validation_images
from cxr.checkpoint import save_weights, write_json
from cxr.config import ModelConfig, save_config
from cxr.errors import ConfigError, CxrError
from cxr.metrics import choose_thresholds, compute_metrics
from cxr.models import probabilities_numpy
from cxr.models.ensemble import ENSEMBLE, EnsembleClassifier
from cxr.run import RunDir, load_run
from cxr.runtime import forward, select_runtime

__all__ = ["make_ensemble"]


def make_ensemble(
    run_dirs: list[str | Path], out: str | Path, device: str = "auto", progress: bool = True
) -> dict:
    """Write the ensemble run folder `out`; returns its validation metrics (with each member's
    validation mean AUROC under "members", for comparison)."""
    out = Path(out)
    if len(run_dirs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(run_dirs)}")
    if RunDir(out).config.exists():
        raise CxrError(f"{out} already holds a run; choose another --out")
    rt = select_runtime(device)
    runs = [load_run(r, "cpu") for r in run_dirs]
    _check_compatible(runs)
    first = runs[0]

    model = EnsembleClassifier([r.model for r in runs])
    cfg = first.config.model_copy(
        update={
            "model": ModelConfig(arch=ENSEMBLE, members=[r.config.model.arch for r in runs]),
            "out_dir": str(out),
        }
    )
    files = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, files.config)
    shutil.copyfile(first.files.split, files.split)
    save_weights(model, files.weights)
    info = {
        "findings": first.findings,
        "task": first.task,
        "thresholds": {f: 0.5 for f in first.findings},  # replaced below, on validation
        "threshold_method": "youden (validation split)",
        "arch": ENSEMBLE,
        "image_size": cfg.preprocess.image_size,
        "training_data": first.info.get("training_data", {}),
        "best_epoch": None,
        "members": [
            {"run": str(Path(r.run_dir).resolve()), "arch": r.config.model.arch} for r in runs
        ],
    }
    write_json(files.model_json, info)

    ens = load_run(out, rt.device)
    images = validation_images(ens, progress)
    y = images.table.labels
    logits, _ = forward(ens.model, images.pixels, rt, progress=progress, desc="validation")
    scores = probabilities_numpy(logits, ens.task)
    thresholds = choose_thresholds(y, scores, ens.task, findings=ens.findings)
    metrics = compute_metrics(y, scores, ens.findings, ens.task, thresholds)
    for member, run in zip(info["members"], runs, strict=True):
        run.model.to(rt.device)
        member_logits, _ = forward(run.model, images.pixels, rt)
        member_scores = probabilities_numpy(member_logits, run.task)
        member_metrics = compute_metrics(
            y,
            member_scores,
            run.findings,
            run.task,
            choose_thresholds(y, member_scores, run.task, findings=run.findings),
        )
        member["val_mean_auroc"] = member_metrics["mean_auroc"]
        member["val_accuracy"] = member_metrics["accuracy"]
    info["thresholds"] = {f: float(metrics["per_finding"][f]["threshold"]) for f in ens.findings}
    info["decision"] = metrics["decision"]
    write_json(files.model_json, info)
    write_json(files.val_metrics, metrics)
    save_calibration(out, fit_calibration(out, logits, y, ens.task, ens.findings))
    metrics["members"] = info["members"]
    return metrics


def _check_compatible(runs) -> None:
    """One split, one preprocessing, one label set; no nested ensembles."""
    first = runs[0]
    split = first.files.split
    if not split.is_file():
        raise CxrError(f"{first.run_dir} has no split.csv: cannot check the members share a split")
    for run in runs:
        name = run.run_dir
        if run.config.model.arch == ENSEMBLE:
            raise ConfigError(f"{name} is an ensemble already; list its member runs instead")
        if run.findings != first.findings or run.task != first.task:
            raise ConfigError(
                f"{name} predicts {run.task} {run.findings}, {first.run_dir} {first.task} "
                f"{first.findings}: ensemble members must share findings and task"
            )
        if run.config.preprocess != first.config.preprocess:
            raise ConfigError(
                f"{name} preprocesses differently from {first.run_dir} (config.json preprocess): "
                "ensemble members must share one preprocessing"
            )
        other = run.files.split
        if not other.is_file() or other.read_bytes() != split.read_bytes():
            raise ConfigError(
                f"{name}/split.csv differs from {first.run_dir}/split.csv: ensemble members must "
                "be trained on one split (train them with --split-file of the first run), or the "
                "ensemble's validation images would be some member's training images"
            )
        if run.config.data.path != first.config.data.path:
            raise ConfigError(
                f"{name} was trained on {run.config.data.path!r}, "
                f"{first.run_dir} on {first.config.data.path!r}"
            )
    if len({Path(r.run_dir).resolve() for r in runs}) != len(runs):
        raise ConfigError("a run is listed twice")
