"""What a finished (or interrupted) study leaves in its folder: trials.csv, summary.json, the
Optuna plots, and for the best trial best_config.yaml and its one evaluation on test data.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cxr.config import DataConfig, RunConfig, load_config
from cxr.evaluate import evaluate_run
from cxr.run import RunDir, split_keys
from cxr.tune.space import SearchSpace


@dataclass
class TuneResult:
    study_dir: Path
    study_name: str
    counts: dict[str, int]  # complete / pruned / failed / running
    epochs: int  # epochs trained by all trials together
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    best_run: Path | None = None
    best_config: Path | None = None
    test_metrics: dict | None = None


def trial_counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
    }
    return {name: sum(s == state for s in states) for state, name in names.items()}


def epochs_spent(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a trial trained: one reported value per epoch."""
    return len(trial.intermediate_values)


def write_report(
    study: optuna.Study,
    space: SearchSpace,
    base: RunConfig,
    test_data: DataConfig | None = None,
    progress: bool = True,
    allow_overlap: bool = False,
) -> TuneResult:
    """trials.csv, plots, summary.json; and for the best trial best_config.yaml + evaluation."""
    study_dir = Path(base.out_dir)
    counts = trial_counts(study)
    epochs = sum(epochs_spent(t) for t in study.get_trials(deepcopy=False))
    result = TuneResult(study_dir, study.study_name, counts, epochs)
    write_trials_csv(study, study_dir / "trials.csv")
    write_plots(study, study_dir)
    if counts["complete"]:
        write_best(study, space, base, result, test_data, progress, allow_overlap)
    summary = {
        "study": study.study_name,
        "trials": counts,
        "epochs": epochs,
        "best_trial": result.best_trial,
        "best_val_mean_auroc": result.best_value,
        "best_params": result.best_params,
        "best_run": None if result.best_run is None else str(result.best_run),
        "best_config": None if result.best_config is None else str(result.best_config),
        "test_metrics": result.test_metrics
        and {
            k: result.test_metrics.get(k) for k in ("mean_auroc", "auroc", "accuracy", "n_images")
        },
    }
    (study_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return result


def write_best(
    study, space, base, result: TuneResult, test_data=None, progress=True, allow_overlap=False
) -> None:
    """best_config.yaml (for `cxr train --config`); the best run is kept and evaluated once on
    the split's test images (if it has any) and on test_data: only now, after the search."""
    import yaml

    best = study.best_trial
    run = Path(best.user_attrs.get("run_dir") or base.out_dir + "/no-run-folder")
    study_dir = Path(base.out_dir)
    # From the trial's own folder where this machine has it, else rebuilt from its parameters.
    files = RunDir(run)
    cfg = load_config(files.config) if files.config.is_file() else None
    cfg = cfg or space.apply(base, best.params)
    cfg = cfg.model_copy(update={"out_dir": str(study_dir / "retrain-best")})
    result.best_config = study_dir / "best_config.yaml"
    header = (
        f"# Best of study {study.study_name!r}: trial {best.number}, validation mean AUROC "
        f"{best.value:.4f}.\n# Train it again with: cxr train --config {result.best_config}\n"
    )
    raw = json.loads(cfg.model_dump_json())
    result.best_config.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    result.best_trial, result.best_value, result.best_params = best.number, best.value, best.params
    if not files.model_json.is_file():
        return  # the best trial ran on another machine: its folder is there
    result.best_run = run
    if split_keys(run, "test"):
        result.test_metrics = evaluate_run(
            run,
            base.data,
            study_dir / "best_test_metrics.json",
            split="test",
            progress=progress,
            allow_overlap=allow_overlap,
        )
    if test_data is not None:
        result.test_metrics = evaluate_run(
            run,
            test_data,
            study_dir / "best_test_data_metrics.json",
            progress=progress,
            allow_overlap=allow_overlap,
        )


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    """One row per trial: number, state, value, epochs, times, parameters, run folder."""
    trials = study.get_trials(deepcopy=False)
    attrs = ("number", "state", "value", "datetime_start", "duration", "params", "user_attrs")
    frame = study.trials_dataframe(attrs=attrs)
    if len(frame):
        frame.insert(3, "epochs", [epochs_spent(t) for t in trials])
        frame = frame.drop(columns=["user_attrs_heartbeat"], errors="ignore")
    frame.to_csv(path, index=False)


PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


def write_plots(study: optuna.Study, study_dir: Path) -> list[Path]:
    """Each of PLOTS as PNG (matplotlib), and as HTML where plotly is installed."""
    import matplotlib.pyplot as plt
    import optuna.visualization as interactive
    import optuna.visualization.matplotlib as static

    written = []
    options = {"parallel_coordinate": {"params": _top_params(study, 8)}}  # more is unreadable
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and few-trials warnings
                ax = getattr(static, f"plot_{name}")(study, **options.get(name, {}))
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
                if name == "parallel_coordinate":
                    fig.set_size_inches(11, 6)
                fig.savefig(study_dir / f"{name}.png", dpi=120, bbox_inches="tight")
                plt.close(fig)
                written.append(study_dir / f"{name}.png")
                if interactive.is_available():
                    html = study_dir / f"{name}.html"
                    getattr(interactive, f"plot_{name}")(study, **options.get(name, {})).write_html(
                        html, include_plotlyjs="directory"
                    )  # plotly.min.js once beside the pages: they open offline
                    written.append(html)
        except Exception as exc:  # noqa: BLE001 - e.g. importances need 2+ finished trials
            print(f"plot {name} skipped: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    return written


def _top_params(study: optuna.Study, k: int) -> list[str] | None:
    """The k most important parameters (all of them while importances cannot be computed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(optuna.importance.get_param_importances(study))[:k]
    except Exception:  # noqa: BLE001 - too few finished trials
        return None
