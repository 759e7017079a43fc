"""The `cxr` command: parses arguments and calls the subcommand (`cxr.cli_commands`)."""

from __future__ import annotations

import argparse
import sys

from cxr.cli_commands import (  # noqa: F401 - build_config: used by tests and tools
    TRAIN_FLAGS,
    build_config,
    cmd_calibrate,
    cmd_demo,
    cmd_evaluate,
    cmd_explain,
    cmd_export,
    cmd_ood_fit,
    cmd_predict,
    cmd_report,
    cmd_serve,
    cmd_synth,
    cmd_train,
    cmd_tune,
)
from cxr.errors import CxrError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr",
        description="Train, tune, evaluate, explain and serve ResNet classifiers of chest X-rays. "
        "Research software: not a medical device.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a ResNet; writes a run folder")
    t.add_argument("--config", help="a run config (JSON or YAML), e.g. a run's config.json")
    for flag, (_, _, typ, help_) in TRAIN_FLAGS.items():
        t.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, help=help_)
    t.add_argument("--skip-bad", action="store_true", help="skip unreadable images, and say which")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. --set preprocess.clahe_clip_limit=3")  # fmt: skip
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run on a data set")
    e.add_argument("--model", required=True, help="run folder written by `cxr train`")
    e.add_argument("--data", required=True, help="images to evaluate (every image is used)")
    e.add_argument("--format", default="auto", help="auto|folder|nih|chexpert|medmnist|synthetic")
    e.add_argument("--json", help="write the metrics here (plots go beside it)")
    e.add_argument("--skip-bad", action="store_true", help="skip unreadable images, and say which")
    e.add_argument("--split", choices=["train", "val", "test"],
                   help="only the images the run's split.csv puts in this split")  # fmt: skip
    e.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even images or patients the run was trained or validated on "
                   "(refused by default); the outputs say so first")  # fmt: skip
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="the whole job on synthetic phantoms, offline, in minutes")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--n", type=int, default=800, help="number of phantoms")
    d.add_argument("--epochs", type=int, default=6)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="write synthetic phantoms (with lesion masks) to a folder")
    s.add_argument("out")
    s.add_argument("--n", type=int, default=600)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    v = sub.add_parser("serve", help="the web app and JSON API for a trained run (waitress)")
    v.add_argument("--model", required=True, help="run folder written by `cxr train`")
    v.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: ONNX Runtime on RUN/model.onnx (`cxr export` first)")  # fmt: skip
    v.add_argument("--threads", type=int, default=4, help="waitress worker threads")
    v.add_argument("--device", default="cpu", help="cpu|cuda|cuda:N")
    v.add_argument("--max-upload-mb", type=float, default=32.0, help="largest image file")
    v.add_argument("--max-batch-mb", type=float, default=128.0, help="largest batch request")
    v.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="larger images are refused before decoding")  # fmt: skip
    v.add_argument("--save-uploads", metavar="DIR",
                   help="keep a copy of each upload here (default: memory only)")  # fmt: skip
    v.add_argument("--web-dir", help="built front end to serve (default: web/dist)")
    v.add_argument("--no-ood-gate", action="store_true",
                   help="skip the run's out-of-distribution gate")  # fmt: skip
    v.set_defaults(func=cmd_serve)

    r = sub.add_parser("predict", help="predict every image in a folder into a CSV")
    r.add_argument("folder", help="a folder (searched recursively) or one image file")
    r.add_argument("--model", required=True, help="run folder written by `cxr train`")
    r.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: ONNX Runtime on RUN/model.onnx (`cxr export` first)")  # fmt: skip
    r.add_argument("--out", default="predictions.csv", help="CSV to write")
    r.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    r.add_argument("--max-pixels", type=int, default=40_000_000)
    r.add_argument("--batch-size", type=int, default=32, help="images per model call")
    r.add_argument("--workers", type=int, default=None,
                   help="threads decoding and preprocessing ahead of the model "
                        "(default: one per core)")  # fmt: skip
    r.add_argument("--no-ood-gate", action="store_true",
                   help="skip the run's out-of-distribution gate")  # fmt: skip
    r.set_defaults(func=cmd_predict)

    u = sub.add_parser("tune", help="hyperparameter search with Optuna (one or many workers)")
    u.add_argument("--config", help="base run config (JSON or YAML); the space overrides it")
    for flag, (_, _, typ, help_) in TRAIN_FLAGS.items():
        u.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, help=help_)
    u.add_argument("--skip-bad", action="store_true", help="skip unreadable images, and say which")
    u.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="any base config field, e.g. --set preprocess.image_size=64")  # fmt: skip
    u.add_argument("--space", help="search space YAML (default: configs/search_space.yaml)")
    u.add_argument("--study", default="cxr", help="study name: workers with one name share it")
    u.add_argument("--storage", help="sqlite:///FILE (default OUT/study.db), postgresql://..., "
                   "mysql+pymysql://... or journal:FILE")  # fmt: skip
    u.add_argument("--n-trials", type=int, default=20,
                   help="finished trials the study should hold (all workers together)")  # fmt: skip
    u.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    u.add_argument("--sampler", help="tpe|random (overrides the space)")
    u.add_argument("--pruner", help="hyperband|median|asha|none (overrides the space)")
    u.add_argument("--resume", action="store_true",
                   help="continue a study even if its search space changed")  # fmt: skip
    u.add_argument("--test-data", help="after the search, evaluate the best run on these images")
    u.add_argument("--test-format", default="auto", help="format of --test-data")
    u.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even images or patients the run was trained or validated on "
                   "(refused by default); the outputs say so first")  # fmt: skip
    u.set_defaults(func=cmd_tune)

    x = sub.add_parser("export", help="write the run's model as ONNX + its preprocessing contract")
    x.add_argument("--model", required=True, help="run folder written by `cxr train`")
    x.add_argument("--out", help="ONNX file to write (default RUN/model.onnx; contract beside it)")
    x.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    x.set_defaults(func=cmd_export)

    c = sub.add_parser("calibrate", help="fit temperature scaling on a run's validation split")
    c.add_argument("--model", required=True, help="run folder written by `cxr train`")
    c.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even images or patients the run was trained or validated on "
                   "(refused by default); the outputs say so first")  # fmt: skip
    c.set_defaults(func=cmd_calibrate)

    rp = sub.add_parser("report", help="HTML + JSON evaluation report with intervals, "
                        "calibration, subgroups, Grad-CAM and a model card")  # fmt: skip
    rp.add_argument("--model", required=True, help="run folder written by `cxr train`")
    rp.add_argument("--data", required=True, help="images to evaluate")
    rp.add_argument("--format", default="auto", help="auto|folder|nih|chexpert|medmnist|synthetic")
    rp.add_argument("--split", default="auto", choices=["auto", "test", "val", "all"],
                    help="auto: the run's test split if DATA holds it, all images if DATA is "
                    "external")  # fmt: skip
    rp.add_argument("--out", help="folder for report.html, report.json, PNGs (default RUN/report)")
    rp.add_argument("--tta", action="store_true", help="also measure test-time augmentation")
    rp.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the CIs")
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    rp.add_argument("--no-gallery", action="store_true", help="leave out the Grad-CAM gallery")
    rp.add_argument("--skip-bad", action="store_true", help="skip unreadable images, say which")
    rp.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even images or patients the run was trained or validated on "
                   "(refused by default); the outputs say so first")  # fmt: skip
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("explain", help="predict one image and write Grad-CAM overlay PNGs")
    ex.add_argument("image", help="a PNG, JPEG or DICOM file")
    ex.add_argument("--model", required=True, help="run folder written by `cxr train`")
    ex.add_argument("--finding", action="append",
                    help="finding to explain (repeatable; default: those called positive, or "
                    "the most probable)")  # fmt: skip
    ex.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    ex.add_argument("--layer", default="layer4", choices=["layer4", "layer3"],
                    help="target block: layer4 (usual) or layer3 (twice as fine; better on "
                    "inputs under ~160 px, see README)")  # fmt: skip
    ex.add_argument("--out", help="overlay PNG (with several findings: OUT_<finding>.png; "
                    "default ./<image>_<method>_<finding>.png)")  # fmt: skip
    ex.add_argument("--no-ood-gate", action="store_true",
                    help="skip the run's out-of-distribution gate")  # fmt: skip
    ex.set_defaults(func=cmd_explain)

    of = sub.add_parser("ood-fit", help="fit the out-of-distribution gate on a run's training "
                        "images (written into the run folder)")  # fmt: skip
    of.add_argument("--model", required=True, help="run folder written by `cxr train`")
    of.add_argument("--action", default="warn", choices=["warn", "refuse"],
                    help="what predictions do with an input that fails the gate")  # fmt: skip
    of.add_argument("--percentile", type=float, default=99.5,
                    help="of held-out training distances, for the thresholds")  # fmt: skip
    of.add_argument("--limit", type=int, default=2000, help="at most this many training images")
    of.add_argument("--check-limit", type=int, default=500,
                    help="validation images checked after fitting (false refusals)")  # fmt: skip
    of.set_defaults(func=cmd_ood_fit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch is checkpointed; continue with --resume",
              file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
