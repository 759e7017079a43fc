"""`cxr ensemble` and `cxr adapt`: new run folders made from finished runs, for accuracy at
other sites (averaging several models; adjusting one to a new site's prevalence)."""

from __future__ import annotations

import argparse

from cxr.adapt import THRESHOLD_MODES, adapt_run, compare_on_labelled
from cxr.cli.common import device_flag, model_flag, resolve_device
from cxr.config import DataConfig
from cxr.ensemble import make_ensemble
from cxr.metrics import format_table
from cxr.xrv import import_torchxrayvision


def ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished runs trained on one split")
    p.add_argument("--out", required=True, help="the ensemble run folder to create")


def run_ensemble(args: argparse.Namespace) -> int:
    metrics = make_ensemble(args.runs, args.out, resolve_device(args.device))
    for member in metrics["members"]:
        print(
            f"member {member['run']} ({member['arch']}): validation mean AUROC "
            f"{_fmt(member['val_mean_auroc'])}, accuracy {_fmt(member['val_accuracy'])}"
        )
    print(
        "ensemble (mean of the members' logits), thresholds and temperature refitted on the "
        "shared validation split:"
    )
    print(format_table(metrics))
    print(f"run folder: {args.out}")
    return 0


def adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a folder of the new site's images (no labels)")
    p.add_argument("--out", required=True, help="the adjusted run folder to create")
    p.add_argument(
        "--thresholds",
        choices=THRESHOLD_MODES,
        default="keep",
        help="keep: same sensitivity/specificity as validated (default); bayes: 0.5 "
        "on the adjusted probabilities",
    )
    p.add_argument(
        "--labelled-data",
        help="labelled images of the new site: print the calibration before and after on them",
    )
    p.add_argument("--labelled-format", default="auto", help="format of --labelled-data")


def run_adapt(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    summary = adapt_run(args.model, args.data, args.out, args.thresholds, device)
    print(f"estimated from {summary['n_images']} unlabelled images ({summary['method']}):")
    print(f"{'finding':<24}{'prevalence before':>18}{'after':>10}")
    for name, before in summary["prevalence_before"].items():
        print(f"{name:<24}{before:>18.3f}{summary['prevalence_after'][name]:>10.3f}")
    if args.labelled_data:
        data = DataConfig(path=args.labelled_data, format=args.labelled_format)
        both = compare_on_labelled(args.model, args.out, data, device)
        print(f"on labelled {args.labelled_data}:")
        print(f"{'':<10}{'NLL':>8}{'ECE':>8}{'accuracy':>10}{'AUROC':>8}")
        for name in ("before", "after"):
            row = both[name]
            print(
                f"{name:<10}{row['nll']:>8.4f}{_fmt(row['ece']):>8}"
                f"{_fmt(row['accuracy']):>10}{_fmt(row['mean_auroc']):>8}"
            )
    print(f"run folder: {args.out} (adapt.json: priors before/after and the shift applied)")
    return 0


def import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="torchxrayvision:NAME", help="e.g. densenet121-res224-all")
    p.add_argument("--out", required=True, help="the run folder to create")
    p.add_argument(
        "--weights-file",
        help="a local state dict (.safetensors, or .pt/.pth read with weights_only) instead of "
        "torchxrayvision's download",
    )
    p.add_argument(
        "--cache-dir",
        help="torchxrayvision's weights folder (default ~/.torchxrayvision/models_data)",
    )


def run_import(args: argparse.Namespace) -> int:
    info = import_torchxrayvision(args.spec, args.out, args.weights_file, args.cache_dir)
    dropped = info["imported_from"]["dropped_outputs"]
    print(
        f"{args.spec}: {len(info['findings'])} findings"
        + (f" ({len(dropped)} unnamed outputs dropped)" if dropped else "")
        + f", {info['image_size']} px, trained on {', '.join(info['training_data']['datasets'])}"
    )
    print(f"thresholds: {info['threshold_method']}")
    print(f"run folder: {args.out} (serve, predict, evaluate, report, export; train --pretrained)")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# name -> (help, arguments, run, parent parsers)
COMMANDS = {
    "ensemble": (
        "average several runs' logits into one run folder",
        ensemble_arguments,
        run_ensemble,
        [device_flag],
    ),
    "adapt": (
        "adjust a run to a new site's prevalence (EM on unlabelled images)",
        adapt_arguments,
        run_adapt,
        [model_flag, device_flag],
    ),
    "import-weights": (
        "turn a torchxrayvision chest X-ray model into a run folder",
        import_arguments,
        run_import,
        [],
    ),
}
