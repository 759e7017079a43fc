"""`cxr train`, `cxr tune`, `cxr demo`, `cxr synth`: making runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.cli.common import build_config, overlap_flag, train_flags
from cxr.config import DataConfig, RunConfig, config_from_dict
from cxr.data.synthetic import write_synthetic_dataset
from cxr.errors import CxrError
from cxr.evaluate import evaluate_run
from cxr.metrics import format_table
from cxr.run import RunDir
from cxr.train import train
from cxr.tune import load_search_space, run_study


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")


def run_train(args: argparse.Namespace) -> int:
    if args.resume:
        if not args.out:
            raise CxrError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = RunConfig(out_dir=args.out)
    else:
        cfg = build_config(args)
    result = train(cfg, resume=args.resume)
    if result.rank != 0:  # under torchrun, rank 0 alone reports (and wrote the run folder)
        return 0
    print(format_table(result.val_metrics))
    print(f"run folder: {result.run_dir} (best epoch {result.best_epoch})")
    return 0


def tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help="search space YAML (default: configs/search_space.yaml)")
    p.add_argument("--study", default="cxr", help="study name: workers with one name share it")
    p.add_argument(
        "--storage",
        help="sqlite:///FILE (default OUT/study.db), postgresql://..., "
        "mysql+pymysql://... or journal:FILE",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        default=20,
        help="finished trials the study should hold (all workers together)",
    )
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    p.add_argument("--sampler", help="tpe|random (overrides the space)")
    p.add_argument("--pruner", help="hyperband|median|asha|none (overrides the space)")
    p.add_argument(
        "--resume", action="store_true", help="continue a study even if its search space changed"
    )
    p.add_argument("--test-data", help="after the search, evaluate the best run on these images")
    p.add_argument("--test-format", default="auto", help="format of --test-data")


def run_tune(args: argparse.Namespace) -> int:
    args.out = args.out or f"runs/tune-{args.study}"
    base = build_config(args)
    space = load_search_space(args.space).override(args.epochs, args.sampler, args.pruner)
    test = DataConfig(path=args.test_data, format=args.test_format) if args.test_data else None
    try:
        result = run_study(
            base,
            space,
            args.study,
            args.storage,
            args.n_trials,
            args.timeout,
            resume=args.resume,
            test_data=test,
            allow_overlap=args.allow_overlap,
        )
    except KeyboardInterrupt:
        print(
            "interrupted: the running trial is marked failed; run the same command again to "
            "resume the study",
            file=sys.stderr,
        )
        return 130
    c = result.counts
    print(
        f"study {result.study_name}: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed trials, {result.epochs} epochs in all"
    )
    if result.best_trial is not None:
        print(
            f"best: trial {result.best_trial}, validation mean AUROC {result.best_value:.4f}, "
            f"{json.dumps(result.best_params)}"
        )
        print(f"best config: {result.best_config} (cxr train --config {result.best_config})")
    if result.best_run is not None:
        print(f"best run (kept): {result.best_run}")
    if result.test_metrics is not None:
        print("best run on held-out test images (after the search):")
        print(format_table(result.test_metrics))
        print(NOT_A_MEDICAL_DEVICE)
    print(f"trials.csv, plots and summary.json in {result.study_dir}")
    return 0


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--n", type=int, default=800, help="number of phantoms")
    p.add_argument("--epochs", type=int, default=6)


def run_demo(args: argparse.Namespace) -> int:
    """The embedded default: synthetic phantoms, a small ResNet-18, evaluation; a few minutes."""
    out = Path(args.out)
    if RunDir(out).config.exists():
        raise CxrError(f"{out} already holds a run; remove it or pass --out elsewhere")
    print("cxr demo: SYNTHETIC chest-radiograph phantoms (not real patients), no download needed.")
    cfg = config_from_dict(
        {
            "data": {
                "path": "synthetic",
                "format": "synthetic",
                "synthetic_count": args.n,
                "test_fraction": 0.2,
            },
            "preprocess": {"image_size": 96},
            "train": {
                "epochs": args.epochs,
                "batch_size": 32,
                "lr": 2e-3,
                "early_stopping_patience": 0,
            },
            "out_dir": str(out),
        }
    )
    result = train(cfg)
    print("validation (synthetic):")
    print(format_table(result.val_metrics))
    data = DataConfig(path="synthetic", format="synthetic", synthetic_count=args.n)
    test = evaluate_run(out, data, out_json=RunDir(out).test_metrics, split="test")
    print("held-out test split (synthetic, patients never seen in training):")
    print(format_table(test))
    print(f"run folder {out}/: weights, config, split, metrics JSON and ROC/PR plots")
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def run_synth(args: argparse.Namespace) -> int:
    path = write_synthetic_dataset(args.out, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} SYNTHETIC phantoms to {path}")
    return 0


# name -> (help, arguments, run, parent parsers)
COMMANDS = {
    "train": ("train a model; writes a run folder", train_arguments, run_train, [train_flags]),
    "tune": (
        "hyperparameter search with Optuna (one or many workers)",
        tune_arguments,
        run_tune,
        [train_flags, overlap_flag],
    ),
    "demo": (
        "the whole job on synthetic phantoms, offline, in minutes",
        demo_arguments,
        run_demo,
        [],
    ),
    "synth": (
        "write synthetic phantoms (with lesion masks) to a folder",
        synth_arguments,
        run_synth,
        [],
    ),
}
