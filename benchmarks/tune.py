"""Does tuning pay? TPE + pruning against random search and the default config, on real X-rays.

Three arms on ONE patient-level split of the Kermany train folder (the test folder is not used):
  default   the default config (RunConfig()) trained for the budget's epochs;
  random    random search, N trials, no pruning: every trial trains all epochs;
  tpe       TPE + the pruner (Hyperband), N trials, the same space and budget.
Printed side by side: best validation mean AUROC and the epochs each arm trained. The targets:
the tuned config beats the default, and TPE + pruning reaches random search's best with at most
half its epochs. Written to OUT/: tune_benchmark.{json,png} and each arm's study folder.

    .venv/bin/python benchmarks/tune.py                 # ~45 min on an idle 2-core CPU
    .venv/bin/python benchmarks/tune.py --trials 3 --epochs 1 --limit 200 --image-size 32

Defaults, sized for ~45 minutes on 2 cores: 1,500 images (1,200 train / 300 val) at 64 px,
ResNet-18/34, 20 trials of at most 5 epochs per arm (random: 100 epochs, ~23 min; TPE: ~40-50).
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

import optuna
import torch
import yaml
from optuna.trial import TrialState

from cxr.config import config_from_dict, load_config
from cxr.train import train
from cxr.tune.space import DEFAULT_SPACE, search_space_from_dict
from cxr.tune.study import epochs_spent, run_study, shared_split

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def benchmark_space(args: argparse.Namespace) -> dict:
    """The default space at one small image size, ResNet-18/34 (50 would triple an epoch)."""
    raw = yaml.safe_load(DEFAULT_SPACE.read_text())
    raw["params"].pop("preprocess.image_size")
    raw["params"]["model.arch"] = {"choices": args.archs.split(",")}
    raw["epochs"], raw["min_epochs"] = args.epochs, args.min_epochs
    raw["sampler"] |= {"seed": args.seed, "startup_trials": args.startup_trials}
    raw["pruner"]["name"] = args.pruner
    return raw


def run_default(base, out: Path) -> dict:
    """The default config on the same split and budget; a finished run is read back."""
    run = out / "default"
    start = time.perf_counter()
    if not (run / "model.json").is_file():
        resume = (run / "config.json").is_file()
        train(base.model_copy(update={"out_dir": str(run)}), resume=resume, progress=True)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    best = max(row["val_mean_auroc"] or 0.0 for row in history)
    return {"best": best, "epochs": len(history), "seconds": time.perf_counter() - start}


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
    return {
        "best": result.best_value,
        "best_trial": result.best_trial,
        "best_params": result.best_params,
        "epochs": spent,
        "trials": result.counts,
        "curve": curve,
        "seconds": seconds,
    }


def epochs_to_reach(curve: list, target: float) -> int | None:
    for spent, best in curve:
        if best is not None and best >= target:
            return spent
    return None


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name, label in (("random", "random search, no pruning"), ("tpe", "TPE + pruning")):
        xs = [s for s, b in results[name]["curve"] if b is not None]
        ys = [b for _, b in results[name]["curve"] if b is not None]
        ax.step(xs, ys, where="post", marker="o", ms=3, label=label)
    d = results["default"]
    ax.axhline(d["best"], color="grey", ls="--", label=f"default config ({d['epochs']} epochs)")
    ax.set_xlabel("epochs trained (all trials together)")
    ax.set_ylabel("best validation mean AUROC so far")
    ax.set_title("Kermany train folder, one patient-level split")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


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
    ap.add_argument("--pruner", default="hyperband", help="hyperband|median|asha")
    ap.add_argument("--startup-trials", type=int, default=5, help="random trials before TPE")
    ap.add_argument("--archs", default="resnet18,resnet34")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=".cache/cxr")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} at start")  # fmt: skip
    base = config_from_dict(
        {
            "data": {"path": args.data, "limit": args.limit, "val_fraction": args.val_fraction},
            "preprocess": {"image_size": args.image_size},
            "train": {"epochs": args.epochs, "early_stopping_patience": 0,
                      "cache_dir": args.cache_dir},
            "out_dir": str(out),
        }
    )  # fmt: skip
    split, _, _ = shared_split(base, out)  # one split for every arm and every trial
    base = base.model_copy(update={"data": base.data.model_copy(update={"split_file": str(split)})})
    space_raw = benchmark_space(args)
    (out / "space.yaml").write_text(yaml.safe_dump(space_raw, sort_keys=False))

    results = {"default": run_default(base, out)}
    print(f"default config: val AUROC {results['default']['best']:.4f}")
    results["tpe"] = run_arm("tpe", base, space_raw, out, args.trials)
    results["random"] = run_arm(
        "random", base, space_raw, out, args.trials, sampler="random", pruner="none"
    )
    report(results, args, out, load_config(out / "default" / "config.json"))


def report(results: dict, args, out: Path, default_cfg) -> None:
    d, r, t = results["default"], results["random"], results["tpe"]
    reach = epochs_to_reach(t["curve"], r["best"]) if r["best"] is not None else None
    n_train = sum(1 for line in (out / "split.csv").read_text().splitlines()[1:]
                  if line.endswith(",train"))  # fmt: skip
    print(f"\n{args.trials} trials per search, at most {args.epochs} epochs each, "
          f"{args.image_size} px, {n_train} train images; default = {default_cfg.model.arch}, "
          f"{default_cfg.train.optimizer} lr {default_cfg.train.lr:g}\n")  # fmt: skip
    rows = [
        ("default config", "1", f"{d['epochs']}", d["best"], "-", d["seconds"]),
        ("random search, no pruning", f"{args.trials}", f"{r['epochs']}", r["best"],
         f"{r['trials']['complete']} / 0", r["seconds"]),
        (f"TPE + {args.pruner} pruning", f"{args.trials}", f"{t['epochs']}", t["best"],
         f"{t['trials']['complete']} / {t['trials']['pruned']}", t["seconds"]),
    ]  # fmt: skip
    print("| arm | trials | epochs trained | best val AUROC | complete / pruned | minutes |")
    print("|---|---|---|---|---|---|")
    for name, n, epochs, best, cp, seconds in rows:
        shown = "n/a" if best is None else f"{best:.4f}"
        print(f"| {name} | {n} | {epochs} | {shown} | {cp} | {seconds / 60:.1f} |")
    beats = t["best"] is not None and t["best"] > d["best"]
    half = reach is not None and reach <= r["epochs"] / 2
    print(f"\ntuned (TPE) beats the default: {'yes' if beats else 'NO'} "
          f"({(t['best'] or 0) - d['best']:+.4f} AUROC)")  # fmt: skip
    print("TPE + pruning reached random search's best "
          + (f"after {reach} epochs" if reach is not None else "never")
          + f" (target: <= {r['epochs'] / 2:.0f}, half of random's {r['epochs']}): "
          + ("yes" if half else "NO"))  # fmt: skip
    print(f"best TPE params: {json.dumps(t['best_params'])}")
    summary = {"args": vars(args), "results": results, "tpe_epochs_to_reach_random_best": reach,
               "tuned_beats_default": beats, "reached_with_half_the_epochs": half}  # fmt: skip
    (out / "tune_benchmark.json").write_text(json.dumps(summary, indent=2))
    plot(results, out / "tune_benchmark.png")
    print(f"written: {out / 'tune_benchmark.json'}, {out / 'tune_benchmark.png'}")


if __name__ == "__main__":
    main()
