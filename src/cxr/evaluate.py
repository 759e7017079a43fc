"""Evaluate a trained run on any data: metrics at the run's validation thresholds, plus plots."""

from __future__ import annotations

from pathlib import Path

from cxr.checkpoint import write_json
from cxr.config import DataConfig
from cxr.data.cache import build_cache
from cxr.data.prepare import resolve_table
from cxr.errors import DataError
from cxr.metrics import compute_metrics
from cxr.models import probabilities_numpy
from cxr.plots import plot_confusion, plot_pr, plot_roc
from cxr.run import load_run, split_keys
from cxr.runtime import forward, select_runtime


def evaluate_run(
    run_dir: str | Path,
    data: DataConfig,
    out_json: str | Path | None = None,
    plots_dir: str | Path | None = None,
    split: str | None = None,
    progress: bool = True,
    device: str = "auto",
    label_map: str | None = None,
) -> dict:
    """Metrics of the run on every image of `data`, thresholds from the run's validation split.

    With `split` ("test", say), only the images the run's split.csv puts in that split are used.
    With `label_map` ("nih->chexpert", or a YAML file of names; see cxr.labelmap), data with
    another label set is scored on the findings it shares with the model, each as a binary one.
    """
    rt = select_runtime(device)  # this machine's, never the training run's
    run = load_run(run_dir, rt.device)
    table = resolve_table(data, run.config.train.cache_dir, progress)
    mapping = None
    if label_map is not None:
        from cxr.labelmap import match_findings

        mapping = match_findings(run.findings, table.findings, label_map)
    elif table.findings != run.findings or table.task != run.task:
        raise DataError(
            f"the data's {table.task} labels {table.findings} do not match the model's "
            f"{run.task} labels {run.findings}",
            path=data.path,
        )
    if split is not None:
        wanted = split_keys(run_dir, split)
        table = table.subset([i for i, key in enumerate(table.keys) if key in wanted])
        if len(table) == 0:
            raise DataError(f"the run's split.csv has no {split!r} images", path=data.path)
    images = build_cache(
        table, run.config.preprocess, run.config.train.cache_dir, data.skip_bad, progress=progress
    )
    logits, _ = forward(run.model, images.pixels, rt, progress=progress, desc="evaluate")
    scores = probabilities_numpy(logits, run.task)
    y, findings, task, thresholds = images.table.labels, run.findings, run.task, run.thresholds
    if mapping is not None:
        y, scores, thresholds = mapping.apply(y, scores, thresholds)
        findings, task = mapping.names, "multilabel"
    metrics = compute_metrics(y, scores, findings, task, thresholds)
    if mapping is not None:
        metrics["label_map"] = mapping.as_dict()
    metrics["model"] = str(run_dir)
    metrics["data"] = data.path
    metrics["split"] = split or "all"
    metrics["skipped"] = [{"file": k, "reason": r} for k, r in images.skipped]
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        write_json(out_json, metrics)
        plots_dir = plots_dir or out_json.parent
    if plots_dir is not None:
        # Named after the JSON so that two evaluations in one folder never overwrite each other.
        stem = Path(out_json).stem if out_json is not None else "eval"
        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        plot_roc(y, scores, findings, thresholds, plots_dir / f"{stem}_roc.png")
        plot_pr(y, scores, findings, thresholds, plots_dir / f"{stem}_pr.png")
        plot_confusion(metrics, plots_dir / f"{stem}_confusion.png")
    return metrics
