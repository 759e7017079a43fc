"""Evaluate a trained run on any data: metrics at the run's validation thresholds, plus plots."""

from __future__ import annotations

from pathlib import Path

from cxr.checkpoint import write_json
from cxr.config import DataConfig, RunConfig
from cxr.data.cache import CachedImages, build_cache
from cxr.data.leakage import Overlap, check_overlap, find_overlap, pixel_hashes
from cxr.data.prepare import resolve_table
from cxr.data.table import ImageTable
from cxr.errors import ConfigError, DataError
from cxr.metrics import compute_metrics
from cxr.models import probabilities_numpy
from cxr.plots import plot_confusion, plot_pr, plot_roc
from cxr.run import LoadedRun, images_in_split, load_run
from cxr.runtime import forward, select_runtime
from cxr.xrv import pretraining_overlap

# DataConfig fields that decide what a label is: evaluation data is read with the run's values.
LABEL_FIELDS = ("uncertain",)


def data_for_run(run_config: RunConfig, data: DataConfig) -> DataConfig:
    """`data` read under the run's label policy (CheXpert -1: data.uncertain), so thresholds
    chosen under one policy are never scored under another; a conflicting explicit value is
    an error."""
    update = {}
    for name in LABEL_FIELDS:
        ours, runs = getattr(data, name), getattr(run_config.data, name)
        if name in data.model_fields_set and ours != runs:
            raise ConfigError(
                f"data.{name}: the run was trained with {runs!r}; evaluating with {ours!r} would "
                "score its thresholds on other labels"
            )
        update[name] = runs
    return data.model_copy(update=update)


def guarded_cache(
    table: ImageTable,
    run: LoadedRun,
    skip_bad: bool,
    allow_overlap: bool,
    progress: bool = True,
    against: tuple[str, ...] = ("train", "val"),
    what: str = "evaluate",
) -> tuple[CachedImages, Overlap]:
    """The evaluation images cached at the run's preprocessing, after the leak guard
    (cxr.data.leakage): ids and names first (before any decoding), then identical pixels."""
    if not allow_overlap:
        check_overlap(find_overlap(table, run.run_dir, against=against), False, what)
    cfg = run.config
    images = build_cache(table, cfg.preprocess, cfg.train.cache_dir, skip_bad, progress=progress)
    overlap = find_overlap(images.table, run.run_dir, pixel_hashes(images.pixels), against)
    return images, check_overlap(overlap, allow_overlap, what)


def warnings_first(overlap: Overlap, pretraining: str | None) -> dict:
    """The first keys of an evaluation's JSON: the stronger warning leads. Images the run was
    trained or validated on come first; else a pretraining overlap; else the (clean) leak check."""
    leakage = {"leakage": overlap.as_dict()}
    if pretraining is None:
        return leakage
    warning = {"pretraining_warning": pretraining}
    return leakage | warning if overlap.n_images else warning | leakage


def evaluate_run(
    run_dir: str | Path,
    data: DataConfig,
    out_json: str | Path | None = None,
    plots_dir: str | Path | None = None,
    split: str | None = None,
    progress: bool = True,
    device: str = "auto",
    label_map: str | None = None,
    allow_overlap: bool = False,
) -> dict:
    """Metrics of the run on every image of `data`, thresholds from the run's validation split.

    With `split` ("test", say), only the images the run's split.csv puts in that split are used.
    With `label_map` ("nih->chexpert", or a YAML file of names; see cxr.labelmap), data with
    another label set is scored on the findings it shares with the model, each as a binary one.
    Images or patients the run was trained or validated on are refused (cxr.data.leakage)
    unless allow_overlap, and then the JSON's first key says so.
    """
    rt = select_runtime(device)  # this machine's, never the training run's
    run = load_run(run_dir, rt.device)
    data = data_for_run(run.config, data)
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
        table = images_in_split(table, run_dir, split, data.path)
    images, overlap = guarded_cache(table, run, data.skip_bad, allow_overlap, progress)
    logits, _ = forward(run.model, images.pixels, rt, progress=progress, desc="evaluate")
    scores = probabilities_numpy(logits, run.task)
    y, findings, task, thresholds = images.table.labels, run.findings, run.task, run.thresholds
    if mapping is not None:
        y, scores, thresholds = mapping.apply(y, scores, thresholds)
        findings, task = mapping.names, "multilabel"
    metrics = warnings_first(overlap, pretraining_overlap(run.info, data.path, data.format))
    metrics |= compute_metrics(y, scores, findings, task, thresholds)
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
