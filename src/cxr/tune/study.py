"""Hyperparameter search with Optuna: every trial is a real training run with its own folder.

The study maximises validation mean AUROC on ONE patient-level split, written once to the study
folder and passed to every trial as data.split_file, so trials are comparable and the test split
is never seen while searching. Each epoch's validation AUROC goes to the pruner (Hyperband by
default), which stops bad trials early. The study lives in a storage that several `cxr tune`
processes can share (SQLite file by default, any SQLAlchemy URL, or an Optuna journal file); a
study that was interrupted resumes where it stopped, and a trial whose worker died is marked
failed (same host: its process is gone; elsewhere: no heartbeat for `grace_s` seconds).

    study folder/  split.csv  search_space.json  study.db  trials/trial_0000/ ...
                   best_config.yaml  trials.csv  summary.json  *.png (*.html with plotly)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import traceback
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from cxr.config import DataConfig, RunConfig
from cxr.data.leakage import check_overlap, find_overlap
from cxr.data.prepare import resolve_table
from cxr.data.splits import (
    check_patient_disjoint,
    describe_split,
    patient_level_split,
    read_split_file,
    write_split_file,
)
from cxr.errors import StudyError
from cxr.run import RunDir
from cxr.train import train
from cxr.tune.space import (
    SearchSpace,
    build_pruner,
    build_sampler,
    check_choices_unchanged,
    describe_changes,
)
from cxr.tune.summary import TuneResult, epochs_spent, trial_counts, write_report

HEARTBEAT_S = 30  # how often a running trial says it is alive
GRACE_S = 120  # a running trial silent for this long is taken as killed and marked failed
MAX_FAILURES_IN_A_ROW = 3  # then the worker stops: the same error would repeat forever
SPACE_ATTR, SPLIT_ATTR = "cxr_search_space", "cxr_split_sha256"
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def run_study(
    base: RunConfig,
    space: SearchSpace,
    study_name: str = "cxr",
    storage: str | None = None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    resume: bool = False,
    test_data: DataConfig | None = None,
    progress: bool = True,
    grace_s: float = GRACE_S,
    allow_overlap: bool = False,
) -> TuneResult:
    """Run trials until the study holds n_trials finished ones (all workers together) or
    `timeout` seconds have passed, then write the report. base.out_dir is the study folder.

    test_data overlapping the study's train/val images is refused before any trial (by patient
    and name; identical pixels after the search), unless allow_overlap (cxr.data.leakage)."""
    if n_trials is not None and n_trials < 0:
        raise StudyError(f"--n-trials must be >= 0, got {n_trials}")
    study_dir = Path(base.out_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    store = open_storage(storage, study_dir)
    split_file, split_sha, task = shared_split(base, study_dir, progress)
    if test_data is not None and not allow_overlap:
        from cxr.evaluate import data_for_run

        test_data = data_for_run(base, test_data)
        test_table = resolve_table(test_data, base.train.cache_dir, progress)
        check_overlap(find_overlap(test_table, split_file), False, "tune and then evaluate")
    space = space.for_task(task)
    _note_searched_fields(base, space)
    study = open_study(space, study_name, store, resume, split_sha, study_dir)
    (study_dir / "search_space.json").write_text(json.dumps(space.to_dict(), indent=2))

    objective = _Objective(base, space, study_dir, split_file)
    deadline = None if timeout is None else time.monotonic() + timeout
    counts = trial_counts(study)
    bar = tqdm(
        total=n_trials,
        initial=_finished(counts, n_trials),
        unit="trial",
        desc=f"study {study_name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    objective.bar = bar
    failures = 0
    try:
        while True:
            fail_dead_trials(study, grace_s)
            counts = trial_counts(study)
            bar.update(_finished(counts, n_trials) - bar.n)
            bar.set_postfix_str(_best_text(study) + f", pruned {counts['pruned']}")
            if (
                n_trials is not None
                and counts["complete"] + counts["pruned"] + counts["running"] >= n_trials
            ):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            trial = study.trials[objective.last_number]
            bar.write(_trial_line(trial, n_trials, study))
            failures = failures + 1 if trial.state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise StudyError(
                    f"{failures} trials in a row failed, the last with: "
                    f"{trial.user_attrs.get('fail_reason', 'unknown error')} "
                    f"(its log: {trial.user_attrs.get('run_dir')}/train.log)"
                )
    finally:
        bar.close()

    return write_report(study, space, base, test_data, progress, allow_overlap)


def _note_searched_fields(base: RunConfig, space: SearchSpace) -> None:
    """Say so where a field set in the base config (--image-size 64, say) is searched anyway."""
    given, default = json.loads(base.model_dump_json()), json.loads(RunConfig().model_dump_json())
    for p in space.params:
        section, key = p.name.split(".", 1)
        if given[section][key] != default[section][key]:
            print(
                f"note: {p.name}={given[section][key]} of the base config is searched over by "
                "the space; to hold it, move it to the space's `fixed` section"
            )


def open_storage(url: str | None, study_dir: Path) -> optuna.storages.BaseStorage:
    """SQLite in the study folder by default; `journal:FILE`; or any SQLAlchemy URL."""
    if url is None:
        url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:") :])
            if not path.parent.is_dir():
                raise StudyError(f"storage {url!r}: folder {path.parent} does not exist")
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        if "://" not in url:
            raise StudyError(
                f"storage {url!r}: expected a SQLAlchemy URL (sqlite:///study.db, "
                "postgresql://user:password@host/db, mysql+pymysql://...) or journal:FILE"
            )
        # Several workers on one SQLite file wait for its lock instead of failing at once; a
        # server that does not answer fails within seconds instead of minutes.
        dialect = url.split(":", 1)[0]
        connect = {"timeout": 60} if dialect.startswith("sqlite") else {}
        if dialect.startswith("postgres"):
            connect = {"connect_timeout": 10}
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect},
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
            )
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver missing, host unreachable, bad path...
        shown = _hide_password(url)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError):
            driver = "pymysql (URL mysql+pymysql://...)" if "mysql" in url else "psycopg2-binary"
            reason = f"no database driver for it (pip install {driver})"
        raise StudyError(f"storage {shown!r} cannot be used: {reason}") from None


def shared_split(base: RunConfig, study_dir: Path, progress: bool = True) -> tuple[Path, str, str]:
    """The one split every trial uses: base.data.split_file, or split.csv written once here.

    Returns (path, sha256 of its bytes, task). A worker that finds split.csv reuses it.
    """
    table = resolve_table(base.data, base.train.cache_dir, progress)
    if base.data.split_file:
        path = Path(base.data.split_file)
        assignment = read_split_file(path, table)
    else:
        path = RunDir(study_dir).split  # a study folder holds its trials' one split
        if path.is_file():
            assignment = read_split_file(path, table)
        else:
            assignment = patient_level_split(
                table,
                base.data.val_fraction,
                base.data.test_fraction,
                base.data.split_seed,
                base.data.val_source,
            )
            print(describe_split(table, assignment))
            tmp = path.with_name(f"split.csv.{os.getpid()}.tmp")
            write_split_file(tmp, table, assignment)
            os.replace(tmp, path)  # two workers starting at once write identical files
    check_patient_disjoint(table, assignment)
    for needed in ("train", "val"):
        if needed not in assignment:
            raise StudyError(f"{path}: the {needed} split is empty (check data.val_fraction)")
    return path.resolve(), hashlib.sha256(path.read_bytes()).hexdigest(), table.task


def open_study(
    space: SearchSpace,
    name: str,
    storage: optuna.storages.BaseStorage,
    resume: bool = False,
    split_sha: str | None = None,
    study_dir: Path | None = None,
) -> optuna.Study:
    """Create the study, or load it; refuse one made with another space (unless resume)."""
    existed = name in optuna.get_all_study_names(storage)
    if not existed and study_dir is not None and any((study_dir / "trials").glob("trial_*")):
        raise StudyError(
            f"{study_dir}/trials holds trials of another study than {name!r} in this storage; "
            "choose another --out, or pass the storage that study lives in"
        )
    # Workers that join a study sample with their own seed, or they would repeat each other.
    seed = space.seed if not existed else space.seed + os.getpid()
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=build_sampler(space, seed),
        pruner=build_pruner(space),
    )
    wanted = json.loads(json.dumps(space.to_dict()))
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None and existed and study.trials and not resume:
        raise StudyError(f"study {name!r} was not made by cxr tune; pass --resume to use it")
    if stored is not None and stored != wanted:
        changed = describe_changes(stored, wanted)
        if not resume:
            raise StudyError(
                f"study {name!r} already exists with a different search space ({changed}); "
                "pass --resume to continue it with this one, or choose another --study"
            )
        check_choices_unchanged(stored, wanted, f"study {name!r}")
        print(f"resuming study {name!r} with a changed search space: {changed}")
    if stored != wanted:
        study.set_user_attr(SPACE_ATTR, wanted)
    old_split = study.user_attrs.get(SPLIT_ATTR)
    if old_split is not None and split_sha is not None and old_split != split_sha:
        raise StudyError(
            f"study {name!r} was run on another split than this worker's: every trial must "
            "share one; pass --split-file with the study's split.csv (and the same --data)"
        )
    if old_split is None and split_sha is not None:
        study.set_user_attr(SPLIT_ATTR, split_sha)
    return study


class EpochReporter:
    """train()'s on_epoch: report each epoch's val AUROC, raise TrialPruned when told to."""

    def __init__(self, trial: optuna.Trial, bar=None, epochs: int | None = None):
        self.trial, self.bar, self.epochs = trial, bar, epochs

    def __call__(self, epoch: int, row: dict) -> None:
        auroc = row.get("val_mean_auroc")
        value = 0.0 if auroc is None else float(auroc)  # not estimable counts as worthless
        self.trial.report(value, epoch)
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"trial {self.trial.number} epoch {epoch}/{self.epochs} val AUROC {value:.4f}"
            )
        last = self.epochs is not None and epoch >= self.epochs  # pruning it then saves nothing
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (val AUROC {value:.4f})")


class _Objective:
    """One trial: sample, build the run config, train in its own folder, return its AUROC."""

    def __init__(self, base: RunConfig, space: SearchSpace, study_dir: Path, split_file: Path):
        self.base, self.space, self.study_dir, self.split_file = base, space, study_dir, split_file
        self.bar = None
        self.last_number = -1

    def __call__(self, trial: optuna.Trial) -> float:
        self.last_number = trial.number
        run_dir = self.study_dir / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        try:
            params = self.space.suggest(trial)
            cfg = self.space.apply(
                self.base, params, out_dir=str(run_dir), data={"split_file": str(self.split_file)}
            )
            run_dir.mkdir(parents=True, exist_ok=True)
            reporter = EpochReporter(trial, self.bar, self.space.epochs)
            with _heartbeat(trial), open(run_dir / "train.log", "a") as log:
                with contextlib.redirect_stdout(log):
                    try:
                        result = train(cfg, progress=False, on_epoch=reporter)
                    except optuna.TrialPruned:
                        raise
                    except Exception:
                        traceback.print_exc(file=log)
                        raise
        except optuna.TrialPruned:
            RunDir(run_dir).weights.unlink(missing_ok=True)  # never the best
            raise
        except (Exception, KeyboardInterrupt) as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:  # trials are never resumed one by one: their checkpoints are dead weight
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if result.best_val_auroc is None:
            raise StudyError("validation AUROC is not estimable (one class in validation)")
        return float(result.best_val_auroc)


@contextlib.contextmanager
def _heartbeat(trial: optuna.Trial):
    """Beat into the trial's user attrs (journal storages have no heartbeat of their own)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried, never fatal
                trial.set_user_attr("heartbeat", time.time())
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_dead_trials(study: optuna.Study, grace_s: float = GRACE_S) -> list[int]:
    """Mark failed the RUNNING trials whose worker is dead; returns their numbers.

    Dead: a process of this host that no longer exists, or no heartbeat for grace_s seconds.
    """
    now, failed = time.time(), []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        last = t.user_attrs.get("heartbeat") or t.datetime_start.timestamp()
        reason = None
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            reason = f"its worker process {pid} on {host} is gone"
        elif now - float(last) > grace_s:
            reason = (
                f"no heartbeat from {t.user_attrs.get('worker', 'its worker')} for "
                f"{now - float(last):.0f} s"
            )
        if reason is None:
            continue
        with contextlib.suppress(Exception):  # another worker may have failed it first
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
            print(f"trial {t.number} marked failed: {reason}")
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _finished(counts: dict[str, int], n_trials: int | None) -> int:
    done = counts["complete"] + counts["pruned"]
    return done if n_trials is None else min(done, n_trials)


def _best_text(study: optuna.Study) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "best: none yet"
    return f"best {best.value:.4f} (trial {best.number})"


def _trial_line(trial: optuna.trial.FrozenTrial, n_trials: int | None, study) -> str:
    head = f"trial {trial.number}" + (f" (of {n_trials})" if n_trials else "")
    epochs = epochs_spent(trial)
    if trial.state == TrialState.COMPLETE:
        what = f"val AUROC {trial.value:.4f} in {epochs} epochs"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(epochs, float("nan"))
        what = f"pruned after {epochs} epoch(s) at val AUROC {last:.4f}"
    else:
        what = f"FAILED: {trial.user_attrs.get('fail_reason', 'unknown error')}"
    params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.params.items())
    return f"{head}: {what}; {_best_text(study)} | {params}"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: nothing to hide
        return url
