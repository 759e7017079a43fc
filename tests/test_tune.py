"""`cxr tune`: search-space parsing, tiny real studies on Kermany images, pruning, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cxr.cli import main
from cxr.config import RunConfig, config_from_dict, load_config
from cxr.errors import ConfigError, CxrError
from cxr.tune.space import load_search_space, search_space_from_dict
from cxr.tune.study import (
    EpochReporter,
    StudyError,
    fail_dead_trials,
    open_storage,
    open_study,
    run_study,
)

# A small space: two optimisers (momentum only for SGD), a learning rate, two losses (gamma only
# for focal). Preprocessing stays fixed so every trial reuses one cache of tiny images.
TINY_SPACE = {
    "epochs": 1,
    "sampler": {"name": "tpe", "seed": 0, "startup_trials": 2},
    "pruner": {"name": "median", "startup_trials": 1},
    "fixed": {"train.early_stopping_patience": 0},
    "params": {
        "train.optimizer": {"choices": ["sgd", "adamw"]},
        "train.lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "train.momentum": {"low": 0.8, "high": 0.95, "when": {"train.optimizer": "sgd"}},
        "train.loss": {"choices": ["ce", "focal"]},
        "train.focal_gamma": {"low": 1.0, "high": 3.0, "when": {"train.loss": "focal"}},
    },
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # shared: every study here reuses one image cache


def _base(data: Path, out: Path, cache_dir: Path, **train) -> RunConfig:
    return config_from_dict(
        {
            "data": {"path": str(data), "limit": 64, "val_fraction": 0.25},
            "preprocess": {"image_size": 32},
            "train": {"batch_size": 16, "cache_dir": str(cache_dir), "threads": 2} | train,
            "out_dir": str(out),
        }
    )


def _space_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE | changes, sort_keys=False))
    return path


def _tune_argv(data, out, cache_dir, space_file, *extra) -> list[str]:
    return [
        "tune",
        "--data",
        str(data),
        "--limit",
        "64",
        "--val-fraction",
        "0.25",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--space",
        str(space_file),
        "--set",
        f"train.cache_dir={json.dumps(str(cache_dir))}",
        *extra,
    ]


# ---------------------------------------------------------------- search space (no training)


def test_default_search_space_parses_with_its_conditions():
    space = load_search_space()
    names = [p.name for p in space.params]
    wanted = [
        "train.lr",
        "train.optimizer",
        "train.momentum",
        "train.weight_decay",
        "model.arch",
        "train.loss",
        "train.focal_gamma",
        "train.label_smoothing",
        "train.batch_size",
        "preprocess.image_size",
        "preprocess.clahe_clip_limit",
        "preprocess.clahe_tile_grid",
        "preprocess.filter",
        "augment.strength",
    ]
    assert set(wanted) <= set(names), set(wanted) - set(names)
    by_name = {p.name: p for p in space.params}
    assert by_name["train.lr"].log and by_name["train.lr"].kind == "float"
    assert by_name["train.momentum"].when == {"train.optimizer": ("sgd",)}
    assert by_name["train.focal_gamma"].when == {"train.loss": ("focal",)}
    assert by_name["train.label_smoothing"].when == {"train.loss": ("ce",)}
    assert by_name["preprocess.clahe_tile_grid"].kind == "categorical"
    assert space.sampler == "tpe" and space.pruner in ("hyperband", "median")
    losses = {p.name: p.choices for p in space.for_task("multiclass").params}["train.loss"]
    assert set(losses) == {"focal", "ce"}  # BCE does not fit a folder of classes
    losses = {p.name: p.choices for p in space.for_task("multilabel").params}["train.loss"]
    assert set(losses) == {"bce", "weighted_bce", "focal"}


def test_sampled_trials_take_conditional_parameters_only_where_they_belong():
    space = load_search_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_sgd = seen_other = 0
    for _ in range(40):
        trial = study.ask()
        values = space.suggest(trial)
        assert ("train.momentum" in values) == (values["train.optimizer"] == "sgd")
        assert ("train.focal_gamma" in values) == (values["train.loss"] == "focal")
        assert ("train.label_smoothing" in values) == (values["train.loss"] == "ce")
        assert ("preprocess.filter_size" in values) == (values["preprocess.filter"] != "none")
        cfg = space.apply(RunConfig(), values, out_dir="runs/x")
        assert cfg.train.lr == values["train.lr"] and cfg.train.epochs == space.epochs
        assert cfg.model.arch == values["model.arch"]
        assert cfg.train.early_stopping_patience == 0  # from the space's `fixed`
        seen_sgd += values["train.optimizer"] == "sgd"
        seen_other += values["train.optimizer"] != "sgd"
        study.tell(trial, 0.5)
    assert seen_sgd and seen_other


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train.lrr": {"low": 1e-4, "high": 1e-2}}, "unknown parameter 'train.lrr'"),
        ({"trainer.lr": {"low": 1e-4, "high": 1e-2}}, "unknown parameter 'trainer.lr'"),
        ({"train.lr": {"low": 1e-2, "high": 1e-2}}, "empty range"),
        ({"train.lr": {"low": 0.1, "high": 0.01}}, "empty range"),
        ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
        ({"train.lr": {"low": -1.0, "high": 0.1}}, "train.lr"),
        ({"model.arch": {"choices": ["resnet18", "resnet999"]}}, "resnet999"),
        ({"model.arch": {"choices": []}}, "non-empty list"),
        ({"train.lr": {"low": 1e-4, "high": 1e-2, "scale": "log"}}, "unknown key(s) ['scale']"),
        ({"train.optimizer": {"low": 1, "high": 2}}, "list its values under choices"),
        ({"data.limit": {"low": 10, "high": 20}}, "cannot be tuned"),
        ({"train.epochs": {"low": 1, "high": 5}}, "cannot be tuned"),
        (
            {
                "train.momentum": {"low": 0.8, "high": 0.9, "when": {"train.optimizer": "sgd"}},
                "train.optimizer": {"choices": ["sgd", "adam"]},
            },
            "listed above this one",
        ),
        (
            {
                "train.optimizer": {"choices": ["sgd", "adam"]},
                "train.momentum": {"low": 0.8, "high": 0.9, "when": {"train.optimizer": "sgdm"}},
            },
            "not among train.optimizer's choices",
        ),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_search_space_is_an_error_naming_the_parameter(params, message):
    with pytest.raises(ConfigError, match=None) as info:
        search_space_from_dict({"params": params}, source="space.yaml")
    assert message in str(info.value)
    assert "space.yaml" in str(info.value)


def test_bad_top_level_settings_are_named():
    good = {"train.lr": {"low": 1e-4, "high": 1e-2}}
    for raw, message in [
        ({"params": good, "sampler": {"name": "cmaes"}}, "sampler.name"),
        ({"params": good, "pruner": "percentile"}, "pruner.name"),
        ({"params": good, "epochs": 2, "min_epochs": 3}, "min_epochs"),
        ({"params": good, "budget": 3}, "unknown key(s) ['budget']"),
        ({"params": good, "fixed": {"train.lr": 0.1}}, "both fixed and searched"),
        ({"params": good, "fixed": {"model.arch": "vgg"}}, "fixed.model.arch"),
    ]:
        with pytest.raises(ConfigError) as info:
            search_space_from_dict(raw)
        assert message in str(info.value), (raw, str(info.value))


def test_cli_rejects_a_bad_space_file_before_any_training(kermany_train, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {low: 0.01, high: 0.001, log: true}\n")
    code = main(
        [
            "tune",
            "--data",
            str(kermany_train),
            "--space",
            str(space),
            "--out",
            str(tmp_path / "study"),
        ]
    )
    assert code == 2
    assert "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


# ------------------------------------------------------------- storages and study identity


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////no/such/folder/study.db",
        "postgresql://user:secret@127.0.0.1:9/cxr",
        "journal:/no/such/folder/study.log",
        "study.db",
    ],
)
def test_unusable_storage_is_a_clear_error(url, tmp_path):
    with pytest.raises(StudyError) as info:
        open_storage(url, tmp_path)
    assert "storage" in str(info.value)
    assert "secret" not in str(info.value)  # the password is never printed


@pytest.mark.slow  # trains a model
def test_study_with_another_search_space_is_refused_unless_resumed(
    kermany_train, tmp_path, cache_dir, capsys
):
    base = _base(kermany_train, tmp_path / "study", cache_dir)
    first = search_space_from_dict(TINY_SPACE)
    run_study(base, first, "s", n_trials=0, progress=False)  # creates the study, trains nothing
    changed = dict(
        TINY_SPACE, params=TINY_SPACE["params"] | {"train.lr": {"low": 1e-4, "high": 1e-2}}
    )
    with pytest.raises(StudyError, match="different search space") as info:
        run_study(base, search_space_from_dict(changed), "s", n_trials=0, progress=False)
    assert "params.train.lr.low" in str(info.value)
    run_study(base, search_space_from_dict(changed), "s", n_trials=0, resume=True, progress=False)
    # the same study again with its (new) space needs no flag
    run_study(base, search_space_from_dict(changed), "s", n_trials=0, progress=False)
    # Optuna cannot change a categorical parameter's choices inside a study, even resumed
    other = dict(
        TINY_SPACE,
        params=TINY_SPACE["params"] | {"train.optimizer": {"choices": ["sgd", "adamw", "adam"]}},
    )
    with pytest.raises(CxrError, match="choices of train.optimizer cannot change"):
        run_study(base, search_space_from_dict(other), "s", n_trials=0, resume=True, progress=False)
    # through the CLI: exit code 2 and the reason, before any trial
    code = main(
        _tune_argv(
            kermany_train,
            tmp_path / "study",
            cache_dir,
            _space_file(tmp_path),
            "--study",
            "s",
            "--n-trials",
            "1",
        )
    )
    assert code == 2
    assert "different search space" in capsys.readouterr().err
    assert not (tmp_path / "study" / "trials").exists()


# ------------------------------------------------------------------ real tiny studies


@pytest.mark.slow
def test_tiny_real_study_writes_a_best_config_that_train_reads(kermany_train, tmp_path, cache_dir):
    out = tmp_path / "study"
    code = main(
        _tune_argv(
            kermany_train,
            out,
            cache_dir,
            _space_file(tmp_path),
            "--n-trials",
            "2",
            "--study",
            "tiny",
        )
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 2
    assert summary["epochs"] >= 2  # 1 epoch per trial: each is a real training run
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("number,state,value,epochs")
    assert (out / "optimization_history.png").stat().st_size > 1000
    assert (out / "parallel_coordinate.png").is_file()
    for n in (0, 1):  # each trial: its own run folder, on the study's one split
        run = out / "trials" / f"trial_{n:04d}"
        assert (run / "history.jsonl").is_file()
        assert (run / "split.csv").read_text() == (out / "split.csv").read_text()
        assert not (run / "checkpoints").exists()

    best_yaml = out / "best_config.yaml"
    best = load_config(best_yaml)
    best_run = Path(summary["best_run"])
    assert best == load_config(best_run / "config.json").model_copy(
        update={"out_dir": best.out_dir}
    )
    for name, value in summary["best_params"].items():
        section, field = name.split(".")
        assert getattr(getattr(best, section), field) == value
    assert best.data.split_file == str((out / "split.csv").resolve())

    retrain = tmp_path / "retrain"
    assert main(["train", "--config", str(best_yaml), "--out", str(retrain)]) == 0
    again = load_config(retrain / "config.json")
    assert again.train == best.train and again.preprocess == best.preprocess
    assert (retrain / "split.csv").read_text() == (out / "split.csv").read_text()
    assert (retrain / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_trial_that_reports_a_bad_value_is_pruned(kermany_train, tmp_path, cache_dir):
    space = search_space_from_dict(TINY_SPACE | {"epochs": 2})
    base = _base(kermany_train, tmp_path / "study", cache_dir)
    run_study(base, space, "p", n_trials=0, progress=False)
    study = optuna.load_study(study_name="p", storage=open_storage(None, tmp_path / "study"))
    # A finished trial that scored a perfect 1.0 at every epoch: the median to beat.
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    # The next trial is made bad on purpose: a learning rate that cannot learn in one epoch.
    study.enqueue_trial(
        {"train.optimizer": "sgd", "train.lr": 1e-3, "train.momentum": 0.8, "train.loss": "ce"}
    )
    result = run_study(base, space, "p", n_trials=2, progress=False)
    trial = study.trials[1]
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped after epoch 1 of 2
    assert trial.intermediate_values[1] < 1.0
    run = Path(trial.user_attrs["run_dir"])
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    assert not (run / "model.safetensors").exists() and not (run / "checkpoints").exists()
    assert result.counts["pruned"] == 1 and result.best_trial == 0


def test_epoch_reporter_prunes_below_the_median_and_lets_good_trials_run():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={1: 0.8, 2: 0.9}))
    good = study.ask()
    EpochReporter(good)(1, {"val_mean_auroc": 0.85})  # above the median: goes on
    bad = study.ask()
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        EpochReporter(bad)(1, {"val_mean_auroc": 0.6})
    worse = study.ask()
    with pytest.raises(optuna.TrialPruned):  # not estimable counts as 0, never as good
        EpochReporter(worse)(1, {"val_mean_auroc": None})


def _worker(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "cxr.cli", *argv], stdout=fh, stderr=subprocess.STDOUT, env=env
        )


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(kermany_train, tmp_path, cache_dir):
    out = tmp_path / "study"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    argv = _tune_argv(
        kermany_train, out, cache_dir, _space_file(tmp_path), "--study", "shared", "--storage", url
    )
    # Create the study and its split first, so that both workers start their trials at once.
    assert main([*argv, "--n-trials", "0"]) == 0
    argv += ["--set", "train.threads=1"]  # two workers, two cores
    workers = [_worker([*argv, "--n-trials", "4"], tmp_path / f"worker{i}.log") for i in range(2)]
    for i, w in enumerate(workers):
        assert w.wait(timeout=600) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(finished) <= 5  # two workers may both start the last one
    assert all(t.state != TrialState.FAIL for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost or repeated
    runs = {t.user_attrs["run_dir"] for t in trials}
    assert len(runs) == len(trials) and all((Path(r) / "history.jsonl").is_file() for r in runs)
    pids = {w.pid for w in workers}
    owners = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials}
    assert owners == pids  # both workers ran trials of the one study


@pytest.mark.slow
def test_killed_worker_trial_is_marked_failed_and_the_study_resumes(
    kermany_train, tmp_path, cache_dir
):
    out = tmp_path / "study"
    journal = f"journal:{tmp_path / 'study.log'}"
    argv = _tune_argv(
        kermany_train,
        out,
        cache_dir,
        _space_file(tmp_path),
        "--study",
        "r",
        "--n-trials",
        "3",
        "--storage",
        journal,
    )
    worker = _worker(argv, tmp_path / "worker.log")
    second = out / "trials" / "trial_0001"
    deadline = time.monotonic() + 300
    while not second.exists():  # trial 0 finished, trial 1 started: kill the worker now
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker never reached its second trial"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    storage = open_storage(journal, out)
    before = optuna.load_study(study_name="r", storage=storage).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    base = _base(kermany_train, out, cache_dir)
    result = run_study(
        base, search_space_from_dict(TINY_SPACE), "r", journal, n_trials=2, progress=False
    )
    trials = optuna.load_study(study_name="r", storage=open_storage(journal, out)).trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == before[0].value
    assert trials[1].state == TrialState.FAIL  # not lost silently: failed, with the reason
    assert "is gone" in trials[1].user_attrs["fail_reason"]
    assert [t.state for t in trials[2:]] in ([TrialState.COMPLETE], [TrialState.PRUNED])
    counts = result.counts
    assert counts["complete"] + counts["pruned"] == 2 and counts["failed"] == 1
    assert counts["running"] == 0
    assert (out / "best_config.yaml").is_file()


def test_timeout_stops_starting_trials(kermany_train, tmp_path, cache_dir):
    base = _base(kermany_train, tmp_path / "study", cache_dir)
    result = run_study(
        base, search_space_from_dict(TINY_SPACE), "t", n_trials=5, timeout=0, progress=False
    )
    assert result.counts == {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    assert result.best_trial is None and not (tmp_path / "study" / "trials").exists()
    assert (tmp_path / "study" / "trials.csv").is_file()
    assert json.loads((tmp_path / "study" / "summary.json").read_text())["best_trial"] is None


def test_trial_of_a_silent_worker_elsewhere_is_marked_failed_after_the_grace_period():
    study = optuna.create_study(direction="maximize")
    silent, alive = study.ask(), study.ask()
    for trial, beat in ((silent, time.time() - 600), (alive, time.time())):
        trial.set_user_attr("worker", "another-host:4242")
        trial.set_user_attr("heartbeat", beat)
    assert fail_dead_trials(study, grace_s=120) == [silent.number]
    states = {t.number: t.state for t in study.trials}
    assert states == {silent.number: TrialState.FAIL, alive.number: TrialState.RUNNING}
    assert "no heartbeat from another-host:4242" in study.trials[0].user_attrs["fail_reason"]


def test_run_study_rejects_negative_trial_counts(tmp_path):
    with pytest.raises(CxrError, match="n-trials"):
        run_study(RunConfig(out_dir=str(tmp_path)), search_space_from_dict(TINY_SPACE), n_trials=-1)


def test_open_study_refuses_trials_of_a_foreign_study(tmp_path):
    (tmp_path / "trials" / "trial_0000").mkdir(parents=True)
    storage = open_storage(None, tmp_path)
    with pytest.raises(StudyError, match="another study"):
        open_study(search_space_from_dict(TINY_SPACE), "new", storage, study_dir=tmp_path)


def test_the_default_search_space_file_exists():
    """`cxr tune` without --space and benchmarks/tune.py read it (it moved with cxr.tune)."""
    from cxr.tune.space import DEFAULT_SPACE

    assert DEFAULT_SPACE.is_file(), DEFAULT_SPACE


@pytest.mark.slow  # trains a model
def test_test_data_on_the_study_split_is_refused_before_any_trial(
    kermany_train, tmp_path, cache_dir
):
    """Issue 11 item 1: `tune --test-data` on images of the study's own train/val split is
    refused by the leak guard before the search spends any trial; --allow-overlap goes on."""
    from cxr.config import DataConfig
    from cxr.errors import LeakageError

    base = _base(kermany_train, tmp_path / "study", cache_dir)
    space = search_space_from_dict(TINY_SPACE)
    with pytest.raises(LeakageError, match=r"refusing to tune.*by image name"):
        run_study(
            base,
            space,
            "leak",
            n_trials=0,
            test_data=DataConfig(path=str(kermany_train)),
            progress=False,
        )
    assert not (tmp_path / "study" / "trials").exists()
    run_study(
        base,
        space,
        "leak",
        n_trials=0,
        test_data=DataConfig(path=str(kermany_train)),
        progress=False,
        allow_overlap=True,
    )
