"""Does tuning pay? TPE + pruning against random search and the default config, on real X-rays,
scored on images no search ever saw.

Per seed, the Kermany train folder is split ONCE by patient into train / validation / test (the
test part is held out from the start; the official test folder is not used). Three arms:
  default   the default config (RunConfig()) trained for the budget's epochs;
  random    random search, N trials, no pruning: every trial trains all epochs;
  tpe       TPE + the pruner (Hyperband), N trials, the same space and budget.
The searches choose their winner by validation mean AUROC; every arm's winner (the default's
run, each search's best trial) is then scored on the held-out TEST split, which no trial
trained or was chosen on. This repeats over --seeds seeds (the split, the weights' seed and the
sampler's seed all change), and the test AUROC of each arm is printed as mean +- standard
deviation over seeds, with the per-seed paired difference to the default. A tuned config's
validation AUROC is optimistic (it is the maximum over N tries on the same images); only the
test figure answers "does tuning pay?".
Also printed, per seed: whether TPE + pruning reached random search's best validation AUROC
with at most half its epochs (a search-cost question, answered on validation on purpose).
Written to OUT/: tune_benchmark.{json,png} and each seed's study folders.

    .venv/bin/python benchmarks/tune.py                 # ~45 min per seed on an idle 2-core CPU
    .venv/bin/python benchmarks/tune.py --seeds 3 --trials 2 --epochs 1 --limit 120 \
        --image-size 32                                 # a smoke run: not a measurement

Defaults, sized for ~45 minutes per seed on 2 cores: 1,500 images (60% train / 20% val / 20%
test, by patient) at 64 px, ResNet-18/34, 20 trials of at most 5 epochs per arm.
Both searches use the same sampler seed, so TPE's random start-up trials are random search's
first trials too: what differs is TPE's model of the space after them, and the pruning.
Interrupted? Run the same command again: the studies resume and finished arms are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from optuna.trial import TrialState
from spread import show, spread  # benchmarks/spread.py

from cxr.config import DataConfig, config_from_dict, load_config
from cxr.evaluate import evaluate_run
from cxr.train import train
from cxr.tune.space import DEFAULT_SPACE, search_space_from_dict
from cxr.tune.study import epochs_spent, run_study, shared_split

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def benchmark_space(args: argparse.Namespace, seed: int) -> dict:
    """The default space at one small image size, ResNet-18/34 (50 would triple an epoch)."""
    raw = yaml.safe_load(DEFAULT_SPACE.read_text())
    raw["params"].pop("preprocess.image_size")
    raw["params"]["model.arch"] = {"choices": args.archs.split(",")}
    raw["epochs"], raw["min_epochs"] = args.epochs, args.min_epochs
    raw["sampler"] |= {"seed": seed, "startup_trials": args.startup_trials}
    raw["pruner"]["name"] = args.pruner
    return raw


def test_auroc(run_dir: Path, data: DataConfig) -> float | None:
    """Mean AUROC of a finished run on the split's TEST images (never trained or chosen on)."""
    metrics = evaluate_run(run_dir, data, split="test", progress=False)
    return metrics["mean_auroc"]


def run_default(base, out: Path) -> dict:
    """The default config on the same split and budget; a finished run is read back."""
    run = out / "default"
    start = time.perf_counter()
    if not (run / "model.json").is_file():
        resume = (run / "config.json").is_file()
        train(base.model_copy(update={"out_dir": str(run)}), resume=resume, progress=True)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    best = max(row["val_mean_auroc"] or 0.0 for row in history)
    return {
        "best": best,
        "epochs": len(history),
        "seconds": time.perf_counter() - start,
        "run_dir": str(run),
        "test": test_auroc(run, base.data),
    }


def run_arm(name: str, base, space_raw: dict, out: Path, trials: int, **override) -> dict:
    space = search_space_from_dict(space_raw, source=f"{name} space").override(**override)
    start = time.perf_counter()
    cfg = base.model_copy(update={"out_dir": str(out / name)})
    result = run_study(cfg, space, study_name=name, n_trials=trials, progress=True)
    seconds = time.perf_counter() - start
    storage = f"sqlite:///{(out / name / 'study.db').resolve()}"
    study = optuna.load_study(study_name=name, storage=storage)
    # In the order trials finished: epochs spent so far, and the best complete value so far.
    done = sorted(
        (t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.datetime_complete,
    )
    curve, spent, best = [], 0, None
    for t in done:
        spent += epochs_spent(t)
        if t.state == TrialState.COMPLETE and (best is None or t.value > best):
            best = t.value
        curve.append((spent, best))
    # The winner chosen on validation, scored on the held-out test images.
    winner = Path(study.best_trial.user_attrs["run_dir"]) if result.best_value is not None else None
    return {
        "best": result.best_value,
        "best_trial": result.best_trial,
        "best_params": result.best_params,
        "epochs": spent,
        "trials": result.counts,
        "curve": curve,
        "seconds": seconds,
        "run_dir": str(winner) if winner else None,
        "test": test_auroc(winner, base.data) if winner else None,
    }


def epochs_to_reach(curve: list, target: float) -> int | None:
    for spent, best in curve:
        if best is not None and best >= target:
            return spent
    return None


ARMS = (
    ("default", "default config"),
    ("random", "random search, no pruning"),
    ("tpe", "TPE + pruning"),
)


def plot(per_seed: dict, path: Path) -> None:
    """Test mean AUROC of each arm's winner, one dot per seed, the mean as a bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    for x, (name, _) in enumerate(ARMS):
        values = [r[name]["test"] for r in per_seed.values() if r[name]["test"] is not None]
        if values:
            ax.bar(x, np.mean(values), color="#cfd8e3", width=0.6)
            ax.plot([x] * len(values), values, "o", color="#1f4e79")
    ax.set_xticks(range(len(ARMS)), [label for _, label in ARMS], fontsize=8)
    ax.set_ylabel("test mean AUROC (held-out patients)")
    ax.set_title(f"Kermany train folder, {len(per_seed)} seed(s): split, weights, sampler")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def run_seed(args, seed: int, out: Path) -> dict:
    """One seed: its own patient-level train/val/test split, three arms, test AUROC each."""
    out.mkdir(parents=True, exist_ok=True)
    base = config_from_dict(
        {
            "data": {
                "path": args.data,
                "limit": args.limit,
                "val_fraction": args.val_fraction,
                "test_fraction": args.test_fraction,
                "split_seed": seed,
            },
            "preprocess": {"image_size": args.image_size},
            "train": {
                "epochs": args.epochs,
                "early_stopping_patience": 0,
                "cache_dir": args.cache_dir,
                "seed": seed,
            },
            "out_dir": str(out),
        }
    )
    split, _, _ = shared_split(base, out)  # one split for every arm and every trial
    if not any(line.endswith(",test") for line in split.read_text().splitlines()):
        raise SystemExit(f"{split}: no test images held out (--test-fraction, --limit)")
    base = base.model_copy(update={"data": base.data.model_copy(update={"split_file": str(split)})})
    space_raw = benchmark_space(args, seed)
    (out / "space.yaml").write_text(yaml.safe_dump(space_raw, sort_keys=False))

    results = {"default": run_default(base, out)}
    results["tpe"] = run_arm("tpe", base, space_raw, out, args.trials)
    results["random"] = run_arm(
        "random", base, space_raw, out, args.trials, sampler="random", pruner="none"
    )
    r, t = results["random"], results["tpe"]
    reach = epochs_to_reach(t["curve"], r["best"]) if r["best"] is not None else None
    results["tpe_epochs_to_reach_random_best"] = reach
    results["reached_with_half_the_epochs"] = reach is not None and reach <= r["epochs"] / 2
    results["n_images"] = {
        part: sum(1 for line in split.read_text().splitlines()[1:] if line.endswith("," + part))
        for part in ("train", "val", "test")
    }
    results["default_config"] = load_config(out / "default" / "config.json").train.model_dump(
        include={"optimizer", "lr"}
    ) | {"arch": load_config(out / "default" / "config.json").model.arch}
    print(
        f"seed {seed}: test AUROC default {results['default']['test']}, random "
        f"{r['test']}, TPE {t['test']}"
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(KERMANY / "chest_xray" / "train"))
    ap.add_argument("--out", default="runs/bench-tune")
    ap.add_argument("--trials", type=int, default=20, help="trials per searching arm")
    ap.add_argument("--epochs", type=int, default=5, help="every trial's budget in epochs")
    ap.add_argument("--min-epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=1500, help="images from the folder")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="patients held out from the start; the winners are scored on them",
    )
    ap.add_argument("--pruner", default="hyperband", help="hyperband|median|asha")
    ap.add_argument("--startup-trials", type=int, default=5, help="random trials before TPE")
    ap.add_argument("--archs", default="resnet18,resnet34")
    ap.add_argument("--seeds", type=int, default=3, help="repeats, each its own split and seed")
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument("--cache-dir", default=".cache/cxr")
    args = ap.parse_args()
    if args.seeds < 1 or not 0 < args.test_fraction < 1:
        ap.error("--seeds must be >= 1 and --test-fraction in (0, 1)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    per_seed = {}
    for seed in range(args.seed, args.seed + args.seeds):
        per_seed[seed] = run_seed(args, seed, out / f"seed_{seed}")
    report(per_seed, args, out)


def report(per_seed: dict, args, out: Path) -> None:
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    n = first["n_images"]
    cfg = first["default_config"]
    print(
        f"\n{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); per seed: {args.trials} "
        f"trials per search, at most {args.epochs} epochs each, {args.image_size} px, "
        f"{n['train']} train / {n['val']} val / {n['test']} test images (by patient); "
        f"default = {cfg['arch']}, {cfg['optimizer']} lr {cfg['lr']:g}\n"
    )
    summary = {}
    print(
        "| arm | test AUROC, mean +- sd over seeds | minus default (paired) | "
        "val AUROC (chosen on) | epochs trained | minutes |"
    )
    print("|---|---|---|---|---|---|")
    for name, label in ARMS:
        test = spread([per_seed[s][name]["test"] for s in seeds])
        diff = spread(
            [
                None
                if per_seed[s][name]["test"] is None or per_seed[s]["default"]["test"] is None
                else per_seed[s][name]["test"] - per_seed[s]["default"]["test"]
                for s in seeds
            ]
        )
        val = spread([per_seed[s][name]["best"] for s in seeds])
        epochs = spread([per_seed[s][name]["epochs"] for s in seeds])
        minutes = spread([per_seed[s][name]["seconds"] / 60 for s in seeds])
        summary[name] = {
            "test_auroc": test,
            "minus_default": diff,
            "val_auroc": val,
            "epochs": epochs,
            "minutes": minutes,
        }
        shown_diff = "-" if name == "default" else show(diff)
        print(
            f"| {label} | {show(test)} | {shown_diff} | {show(val)} | "
            f"{epochs['mean']:.0f} | {minutes['mean']:.1f} |"
        )
    tpe_wins = sum(
        1
        for s in seeds
        if per_seed[s]["tpe"]["test"] is not None
        and per_seed[s]["tpe"]["test"] > per_seed[s]["default"]["test"]
    )
    half = sum(1 for s in seeds if per_seed[s]["reached_with_half_the_epochs"])
    print(
        f"\ntuned (TPE) beats the default on held-out test patients in {tpe_wins} of "
        f"{len(seeds)} seeds (mean difference {show(summary['tpe']['minus_default'])})"
    )
    print(
        f"TPE + pruning reached random search's best validation AUROC with at most half its "
        f"epochs in {half} of {len(seeds)} seeds"
    )
    for s in seeds:
        print(f"seed {s}: best TPE params {json.dumps(per_seed[s]['tpe']['best_params'])}")
    record = {
        "args": vars(args),
        "seeds": seeds,
        "summary": summary,
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "scored_on": "held-out patient-level test split of each seed (never searched on)",
        "tpe_beats_default_seeds": tpe_wins,
        "reached_with_half_the_epochs_seeds": half,
    }
    (out / "tune_benchmark.json").write_text(json.dumps(record, indent=2))
    plot(per_seed, out / "tune_benchmark.png")
    print(f"written: {out / 'tune_benchmark.json'}, {out / 'tune_benchmark.png'}")


if __name__ == "__main__":
    main()
