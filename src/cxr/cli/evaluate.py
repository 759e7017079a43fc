"""`cxr evaluate`, `cxr report`, `cxr calibrate`: measuring runs."""

from __future__ import annotations

import argparse

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.calibration import calibrate_run
from cxr.cli.common import data_flags, device_flag, model_flag, overlap_flag, resolve_device
from cxr.compare import compare_runs, format_comparison
from cxr.config import DataConfig
from cxr.evaluate import evaluate_run
from cxr.metrics import format_table
from cxr.report import build_report
from cxr.run import RunDir


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", help="write the metrics here (plots go beside it)")
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="only the images the run's split.csv puts in this split",
    )
    p.add_argument(
        "--map",
        dest="label_map",
        metavar="SRC->DST|FILE",
        help="other label set: nih->chexpert, kermany->nih, ... or a YAML of "
        "model finding: data finding; scores the shared findings",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    data = DataConfig(path=args.data, format=args.format, skip_bad=args.skip_bad)
    metrics = evaluate_run(
        args.model,
        data,
        out_json=args.json,
        split=args.split,
        device=resolve_device(args.device),
        label_map=args.label_map,
        allow_overlap=args.allow_overlap,
    )
    print(format_table(metrics))
    if "pretraining_warning" in metrics:
        print(f"warning: {metrics['pretraining_warning']}")
    if "label_map" in metrics:
        left = metrics["label_map"]["model_only"]
        print(
            f"label map {metrics['label_map']['spec']}: "
            + (
                f"not in the data, so not scored: {', '.join(left)}"
                if left
                else "every model finding scored"
            )
        )
    print(NOT_A_MEDICAL_DEVICE)
    if args.json:
        print(f"metrics written to {args.json}")
    return 0


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", help="run folder A")
    p.add_argument("run_b", help="run folder B (differences are B - A)")
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="only the images run A's split.csv puts in this split",
    )
    p.add_argument(
        "--method",
        choices=["delong", "bootstrap"],
        default="delong",
        help="DeLong (images independent) or a paired patient bootstrap",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", help="write the comparison here")


def run_compare(args: argparse.Namespace) -> int:
    data = DataConfig(path=args.data, format=args.format, skip_bad=args.skip_bad)
    result = compare_runs(
        args.run_a,
        args.run_b,
        data,
        args.method,
        args.split,
        args.n_boot,
        args.seed,
        out_json=args.json,
        device=resolve_device(args.device),
    )
    print(format_comparison(result))
    if args.json:
        print(f"comparison written to {args.json}")
    return 0


def report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split",
        default="auto",
        choices=["auto", "test", "val", "all"],
        help="auto: the run's test split if DATA holds it, all images if DATA is external",
    )
    p.add_argument("--out", help="folder for report.html, report.json, PNGs (default RUN/report)")
    p.add_argument("--tta", action="store_true", help="also measure test-time augmentation")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-gallery", action="store_true", help="leave out the Grad-CAM gallery")


def run_report(args: argparse.Namespace) -> int:
    data = DataConfig(path=args.data, format=args.format, skip_bad=args.skip_bad)
    report = build_report(
        args.model,
        data,
        out_dir=args.out,
        split=args.split,
        tta=args.tta,
        n_boot=args.bootstrap,
        seed=args.seed,
        gallery=not args.no_gallery,
        device=resolve_device(args.device),
        allow_overlap=args.allow_overlap,
    )
    res = report["results"]
    mean = res["mean_auroc"]
    print(
        f"{res['n_images']} images ({report['data']['split']}), mean AUROC "
        + ("not estimable" if mean is None else f"{mean:.3f}")
    )
    for warning in [report.get("pretraining_warning")] + report["warnings"]:
        if warning:
            print(f"warning: {warning}")
    if report.get("adaptation"):
        a = report["adaptation"]
        print(
            f"site adaptation ({a['source_run']} -> {a['adapted_run']}): ECE "
            f"{_num(a['before']['ece'])} -> {_num(a['after']['ece'])}, accuracy "
            f"{_num(a['before']['accuracy'])} -> {_num(a['after']['accuracy'])}, AUROC "
            f"{_num(a['before']['mean_auroc'])} -> {_num(a['after']['mean_auroc'])}"
        )
    print(f"report: {report['paths']['html']} (and {report['paths']['json']})")
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def calibrate_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run_calibrate(args: argparse.Namespace) -> int:
    cal = calibrate_run(
        args.model, device=resolve_device(args.device), allow_overlap=args.allow_overlap
    )
    print(
        f"temperature {cal.temperature:.4f} fitted on {cal.n_images} validation images: "
        f"NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f}, ECE "
        f"{cal.ece_before or 0:.4f} -> {cal.ece_after or 0:.4f}"
    )
    print(
        f"written to {RunDir(args.model).calibration}: predict, serve and report now "
        "give calibrated probabilities, compared with thresholds chosen on them"
    )
    return 0


COMMANDS = {
    "evaluate": (
        "evaluate a run on a data set",
        evaluate_arguments,
        run_evaluate,
        [model_flag, data_flags, device_flag, overlap_flag],
    ),
    "compare": (
        "paired AUROC difference of two runs on the same images (DeLong or a patient bootstrap)",
        compare_arguments,
        run_compare,
        [data_flags, device_flag],
    ),
    "report": (
        "HTML + JSON evaluation report with intervals, calibration, subgroups, Grad-CAM "
        "and a model card",
        report_arguments,
        run_report,
        [model_flag, data_flags, device_flag, overlap_flag],
    ),
    "calibrate": (
        "fit temperature scaling on a run's validation split",
        calibrate_arguments,
        run_calibrate,
        [model_flag, device_flag, overlap_flag],
    ),
}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
