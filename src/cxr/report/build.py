"""The evaluation report a careful reviewer asks for, in one self-contained HTML file (and JSON).

`build_report(run_dir, data)`:
1. rebuilds the run's VALIDATION split from its config.json and split.csv, predicts it, fits (or
   reuses) the temperature there and chooses every operating point there (Youden's J,
   sensitivity >= 0.95, specificity >= 0.95) on calibrated probabilities;
2. predicts the evaluation images (the run's test split, or external data) and measures, per
   finding, AUROC and AUPRC and each operating point's sensitivity, specificity, PPV, NPV and F1
   with 95% patient-level bootstrap intervals; calibration (ECE, reliability) before and after
   temperature scaling; AUROC per subgroup (sex, age band, view) where the data has them;
   optionally the effect of test-time augmentation; a Grad-CAM gallery;
3. writes report.json, the PNG figures, and report.html with the figures inlined as base64, inline
   CSS and no script or external resource, so it opens offline in any browser.

Nothing measured on the evaluation data feeds back into a threshold or the temperature:
`analyse` receives validation and evaluation scores separately and takes every fitted number
from the validation ones.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.adapt import adaptation_before_after
from cxr.bootstrap import binary_statistics, bootstrap_intervals
from cxr.calibration import (
    apply_temperature,
    calibration_summary,
    load_calibration,
    require_validation_split,
    save_calibration,
    validation_images,
)
from cxr.config import DataConfig
from cxr.data.prepare import resolve_table
from cxr.data.splits import SPLITS
from cxr.decision import decision_rule
from cxr.errors import CxrError, DataError
from cxr.evaluate import warnings_first
from cxr.metrics import choose_thresholds, compute_metrics
from cxr.report.analysis import (
    OPERATING_POINTS,
    RATES,
    TTA_VIEWS,
    ScoredImages,
    known_mask,
    subgroup_analysis,
    tta_analysis,
    tta_transform,
)
from cxr.report.card import limitations, model_card, source_kind
from cxr.report.figures import draw_figures, gallery_entries
from cxr.run import LoadedRun, load_run, split_keys
from cxr.runtime import forward, select_runtime
from cxr.xrv import pretraining_overlap

# ---------------------------------------------------------------------------------------------
# Analysis: pure functions of validation and evaluation scores
# ---------------------------------------------------------------------------------------------


def analyse(
    findings: list[str],
    task: str,
    val: ScoredImages,
    test: ScoredImages,
    temperature: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Metrics of `test` at operating points chosen on `val` (calibrated by `temperature`).

    Returns (results, arrays): JSON-ready results, and the arrays the figures need.
    """
    val_probs = apply_temperature(val.logits, task, temperature)
    thresholds, from_val = {}, {}
    for m in OPERATING_POINTS:
        thresholds[m], from_val[m] = choose_thresholds(
            val.labels, val_probs, task, m, return_estimable=True, findings=findings
        )
    probs = apply_temperature(test.logits, task, temperature)
    raw = apply_temperature(test.logits, task, 1.0)

    statistics = {}
    for j, name in enumerate(findings):
        known = known_mask(test.labels, j)
        per_method = {m: float(t[j]) for m, t in thresholds.items()}
        statistics[name] = binary_statistics(
            test.labels[known, j], probs[known, j], per_method, known
        )
    intervals = bootstrap_intervals(
        statistics, len(test.labels), test.patients, n_boot, alpha, seed, progress, "bootstrap"
    )

    before = calibration_summary(test.labels, raw, task, findings)
    after = calibration_summary(test.labels, probs, task, findings)
    per_finding = {}
    for j, name in enumerate(findings):
        labels = test.labels[known_mask(test.labels, j), j]
        n_pos, n_neg = int(np.sum(labels == 1)), int(np.sum(labels == 0))
        points = {}
        for method in OPERATING_POINTS:
            threshold = float(thresholds[method][j])
            pred = probs[known_mask(test.labels, j), j] >= threshold
            points[method] = {
                "threshold": threshold,
                # False: validation had no positives or no negatives; 0.5 is a fallback
                "threshold_from_validation": bool(from_val[method][j]),
                "confusion": {
                    "tp": int(np.sum(pred & (labels == 1))),
                    "fp": int(np.sum(pred & (labels == 0))),
                    "tn": int(np.sum(~pred & (labels == 0))),
                    "fn": int(np.sum(~pred & (labels == 1))),
                },
            } | {rate: intervals[f"{name}|{method}|{rate}"].as_dict() for rate in RATES}
        per_finding[name] = {
            "n_positive": n_pos,
            "n_negative": n_neg,
            "prevalence": n_pos / (n_pos + n_neg) if n_pos + n_neg else None,
            "estimable": bool(n_pos and n_neg),
            "auroc": intervals[f"{name}|auroc"].as_dict(),
            "auprc": intervals[f"{name}|auprc"].as_dict(),
            "ece_before": before["per_finding"][name],
            "ece_after": after["per_finding"][name],
            "operating_points": points,
        }
    aurocs = [v["auroc"]["estimate"] for v in per_finding.values() if v["estimable"]]
    results = {
        "findings": per_finding,
        "mean_auroc": float(np.mean(aurocs)) if aurocs else None,
        "n_images": int(len(test.labels)),
        "n_patients": len(set(test.patients)),
        "thresholds": {
            m: dict(zip(findings, map(float, t), strict=True)) for m, t in thresholds.items()
        },
        # The calls of predict/serve: the run's rule at the Youden point (cxr.decision); the
        # other operating points are the same rule at other thresholds (two classes: one
        # threshold on the positive class, the other class at 1 - t; more: reference only).
        "decision": decision_rule(task, findings, thresholds["youden"]).to_json(),
        # accuracy and per-finding rates of the calls predict/serve make (for more than two
        # classes these are the argmax's, not the one-vs-rest operating points above)
        "at_decision_rule": _at_rule(test.labels, probs, findings, task, thresholds["youden"]),
        "calibration": {
            "temperature": float(temperature),
            "ece_before": before["ece"],
            "ece_after": after["ece"],
            "ece_kind": after["kind"],
            "reliability_before": before["reliability"],
            "reliability_after": after["reliability"],
        },
        "validation": {"n_images": int(len(val.labels)), "n_patients": len(set(val.patients))},
    }
    arrays = {"probs": probs, "raw": raw, "thresholds": thresholds}
    return results, arrays


def _at_rule(labels, probs, findings: list[str], task: str, thresholds) -> dict:
    metrics = compute_metrics(labels, probs, findings, task, thresholds)
    keep = ("sensitivity", "specificity", "ppv", "npv", "confusion")
    per_finding = {f: {k: v[k] for k in keep} for f, v in metrics["per_finding"].items()}
    return {"accuracy": metrics["accuracy"], "per_finding": per_finding}


# ---------------------------------------------------------------------------------------------
# Building the report from a run and data
# ---------------------------------------------------------------------------------------------


def _check_findings(table, run: LoadedRun, data_path: str) -> None:
    if table.findings == run.findings and table.task == run.task:
        return
    missing = [f for f in run.findings if f not in table.findings]
    extra = [f for f in table.findings if f not in run.findings]
    parts = []
    if missing:
        parts.append(f"the model's {missing} are not in the data")
    if extra:
        parts.append(f"the data's {extra} are not in the model")
    if not parts and table.findings != run.findings:
        parts.append(f"same names in another order ({table.findings} vs {run.findings})")
    if table.task != run.task:
        parts.append(f"the data is {table.task}, the model {run.task}")
    raise DataError(
        "the evaluation data's findings differ from the model's: " + "; ".join(parts),
        path=data_path,
    )


def _norm(key: str) -> str:
    return os.path.realpath(key)


def select_split(table, run_dir: Path, split: str, data_path: str):
    """The evaluation images for `split` ("auto", "test", "val" or "all"), and warnings.

    "auto": the run's test split when the data holds it; all images when the data is external
    (no image in the run's split.csv); an error when the data is the run's own training data
    without a test split (every image would have been seen while training or validating).
    """
    if split not in ("auto", "test", "val", "all"):
        raise CxrError(f"--split must be auto, test, val or all, got {split!r}")
    run_keys = {s: {_norm(k) for k in split_keys(run_dir, s)} for s in SPLITS}
    where = [next((s for s, ks in run_keys.items() if _norm(k) in ks), None) for k in table.keys]
    counts = {s: where.count(s) for s in SPLITS}
    if split == "auto":
        if counts["test"]:
            split = "test"
        elif not any(counts.values()):
            split = "all"
        else:
            raise DataError(
                f"this is the run's own data ({counts['train']} training and {counts['val']} "
                "validation images) and the run has no test split: evaluate held-out data, or "
                "pass --split val or --split all knowing the figures will be optimistic",
                path=data_path,
            )
    warnings = []
    if split in ("test", "val"):
        index = [i for i, s in enumerate(where) if s == split]
        if not index:
            raise DataError(
                f"none of these images are in the run's {split!r} split (split.csv); for "
                "external data pass --split all",
                path=data_path,
            )
        table = table.subset(index)
        counts = {s: (len(index) if s == split else 0) for s in counts}
    if counts["val"]:
        warnings.append(
            f"{counts['val']} evaluated image(s) are the validation images on which the operating "
            "points and the temperature were chosen: their figures are optimistic."
        )
    if counts["train"]:
        warnings.append(
            f"{counts['train']} evaluated image(s) were used to train this model: their figures "
            "are optimistic."
        )
    return table, split, warnings


def _scored(images, logits: np.ndarray) -> ScoredImages:
    table = images.table
    return ScoredImages(
        table.labels.astype(np.float64),
        logits,
        list(table.patient_ids),
        dict(table.meta),
        list(table.keys),
    )


def _calibration(run: LoadedRun, val: ScoredImages):
    """The run's saved calibration, or a fresh fit on validation (saved for predict and serve)."""
    from cxr.calibration import fit_calibration

    saved = load_calibration(run.run_dir)
    if saved is not None:
        return saved, "loaded from calibration.json"
    fitted = fit_calibration(run.run_dir, val.logits, val.labels, run.task, run.findings)
    save_calibration(run.run_dir, fitted)
    return fitted, "fitted now on the validation split and saved as calibration.json"


def _method(calibration, origin: str, n_boot: int, seed: int) -> dict:
    """How the numbers were made: bootstrap, operating points, threshold scale, calibration."""
    return {
        "bootstrap": {
            "n_boot": n_boot,
            "alpha": 0.05,
            "seed": seed,
            "unit": "patient",
            "interval": "percentile",
        },
        "operating_points": OPERATING_POINTS,
        "thresholds_scale": "calibrated: thresholds chosen on temperature-scaled validation "
        "probabilities and compared with temperature-scaled probabilities, as cxr predict "
        "and cxr serve do",
        "calibration": {
            "temperature": calibration.temperature,
            "origin": origin,
            "validation_n_images": calibration.n_images,
            "validation_nll_before": calibration.nll_before,
            "validation_nll_after": calibration.nll_after,
            "validation_ece_before": calibration.ece_before,
            "validation_ece_after": calibration.ece_after,
        },
    }


def _measure_tta(run: LoadedRun, images, test, rt, temperature, n_boot, seed, progress) -> dict:
    views = [
        forward(
            run.model,
            images.pixels,
            rt,
            transform=tta_transform(angle, zoom),
            progress=progress,
            desc=f"TTA {name}",
        )[0]
        for name, angle, zoom in TTA_VIEWS
    ]
    return tta_analysis(
        run.findings, run.task, test, np.mean(views, axis=0), temperature, n_boot, seed
    )


def build_report(
    run_dir: str | Path,
    data: DataConfig,
    out_dir: str | Path | None = None,
    split: str = "auto",
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    gallery: bool = True,
    progress: bool = True,
    device: str = "auto",
    allow_overlap: bool = False,
) -> dict:
    """Write report.html, report.json and the figures to out_dir (default RUN/report).

    Images or patients the run was trained or validated on are refused (cxr.data.leakage)
    unless allow_overlap, and then the JSON's first key and the HTML's first line say so.
    """
    from cxr.evaluate import data_for_run, guarded_cache

    if n_boot < 10:
        raise CxrError(f"--bootstrap must be at least 10 resamples, got {n_boot}")
    run_dir = Path(run_dir)
    rt = select_runtime(device)
    run = load_run(run_dir, rt.device)
    require_validation_split(run)
    data = data_for_run(run.config, data)
    out_dir = Path(out_dir) if out_dir is not None else run.files.report

    table = resolve_table(data, run.config.train.cache_dir, progress)
    _check_findings(table, run, data.path)
    table, split, warnings = select_split(table, run_dir, split, data.path)
    images, overlap = guarded_cache(table, run, data.skip_bad, allow_overlap, progress)
    val_images = validation_images(run, progress)
    val = _scored(
        val_images,
        forward(run.model, val_images.pixels, rt, progress=progress, desc="predict validation")[0],
    )
    test = _scored(
        images,
        forward(run.model, images.pixels, rt, progress=progress, desc="predict evaluation")[0],
    )
    calibration, calibration_origin = _calibration(run, val)
    results, arrays = analyse(
        run.findings, run.task, val, test, calibration.temperature, n_boot, seed, progress=progress
    )
    if not np.allclose(
        arrays["thresholds"]["youden"], calibration.threshold_array(run.findings), atol=1e-9
    ):  # the saved thresholds are the Youden ones of these very validation scores
        warnings.append(
            "calibration.json's thresholds differ from the Youden thresholds re-chosen on the "
            "validation images now (different validation images?); the report uses the latter."
        )
    report = {
        **warnings_first(overlap, pretraining_overlap(run.info, data.path, data.format)),
        "title": f"Evaluation of {run_dir.name}",
        "notice": NOT_A_MEDICAL_DEVICE,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "model": {"run_dir": str(run_dir), "findings": run.findings, "task": run.task},
        "data": {
            "path": data.path,
            "format": data.format,
            "split": split,
            "skipped": [{"file": k, "reason": r} for k, r in images.skipped],
        },
        "method": _method(calibration, calibration_origin, n_boot, seed),
        "results": results,
        "warnings": warnings,
        "tta": None,
    }
    report["subgroups"] = subgroup_analysis(
        run.findings, test, arrays["probs"], n_boot, seed, progress
    )
    if tta:
        report["tta"] = _measure_tta(
            run, images, test, rt, calibration.temperature, n_boot, seed, progress
        )
    report["adaptation"] = None
    if (run_dir / "adapt.json").is_file():  # `cxr adapt` made this run: before / after
        report["adaptation"] = adaptation_before_after(run_dir, data, device, progress)
    kind = source_kind(run.config.data)
    report["model_card"] = model_card(run, data, kind)
    report["model_card"]["limitations"] = limitations(report)

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(report, test, arrays, run.findings, run.task, out_dir)
    if (run_dir / "training_curves.png").is_file():
        figures["training"] = run_dir / "training_curves.png"
    report["figures"] = {k: str(v) for k, v in figures.items()}
    entries, note = ([], "left out (--no-gallery)")
    if gallery:
        entries, note = gallery_entries(run_dir, images.table, test, arrays, run.findings, progress)
    report["gallery"] = {
        "note": note,
        "n": len(entries),
        "entries": [{k: v for k, v in e.items() if k != "png"} for e in entries],
    }

    from cxr.checkpoint import write_json

    write_json(out_dir / "report.json", report)
    from cxr.report.html import render_html

    html = render_html(report, figures, entries)
    (out_dir / "report.html").write_text(html, encoding="utf-8")
    report["paths"] = {"html": str(out_dir / "report.html"), "json": str(out_dir / "report.json")}
    return report
