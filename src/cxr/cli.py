"""The `cxr` command: parses arguments, builds typed configs, calls the modules. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import RunConfig, config_from_dict, load_config
from cxr.errors import CxrError

# flag -> config field; every flag is optional and overrides the config file.
TRAIN_FLAGS = {
    "data": ("data", "path", str, "images: a class-folder tree, an NIH folder, a CSV or an .npz"),
    "format": ("data", "format", str, "auto|folder|nih|chexpert|medmnist|synthetic"),
    "limit": ("data", "limit", int, "use at most this many images"),
    "val_fraction": ("data", "val_fraction", float, "share of patients for validation"),
    "split_file": ("data", "split_file", str, "reuse an earlier run's split.csv"),
    "image_size": ("preprocess", "image_size", int, "side of the square model input"),
    "arch": ("model", "arch", str, "resnet18|resnet34|resnet50|resnet101|resnet152"),
    "pretrained": ("model", "pretrained", str, "none|imagenet|PATH to weights"),
    "epochs": ("train", "epochs", int, None),
    "batch_size": ("train", "batch_size", int, None),
    "lr": ("train", "lr", float, "learning rate"),
    "optimizer": ("train", "optimizer", str, "sgd|adam|adamw"),
    "loss": ("train", "loss", str, "auto|bce|weighted_bce|focal|ce"),
    "device": ("train", "device", str, "auto|cpu|cuda|cuda:N"),
    "seed": ("train", "seed", int, None),
    "out": (None, "out_dir", str, "run folder to create"),
}


def build_config(args: argparse.Namespace) -> RunConfig:
    """Config file (if any), then flags, then --set overrides; validated once at the end."""
    raw = json.loads(load_config(args.config).model_dump_json()) if args.config else {}
    for flag, (section, field, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            (raw.setdefault(section, {}) if section else raw)[field] = value
    if getattr(args, "skip_bad", False):
        raw.setdefault("data", {})["skip_bad"] = True
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise CxrError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=3e-4")
        section, field = key.split(".", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        raw.setdefault(section, {})[field] = parsed
    return config_from_dict(raw, source="command line")


def cmd_train(args: argparse.Namespace) -> int:
    from cxr.metrics import format_table
    from cxr.train import train

    if args.resume:
        if not args.out:
            raise CxrError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = RunConfig(out_dir=args.out)
    else:
        cfg = build_config(args)
    result = train(cfg, resume=args.resume)
    print(format_table(result.val_metrics))
    print(f"run folder: {result.run_dir} (best epoch {result.best_epoch})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.config import DataConfig
    from cxr.evaluate import evaluate_run
    from cxr.metrics import format_table

    data = DataConfig(path=args.data, format=args.format, skip_bad=args.skip_bad)
    metrics = evaluate_run(args.model, data, out_json=args.json, split=args.split)
    print(format_table(metrics))
    print(NOT_A_MEDICAL_DEVICE)
    if args.json:
        print(f"metrics written to {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default: synthetic phantoms, a small ResNet-18, evaluation; a few minutes."""
    from cxr.config import DataConfig
    from cxr.evaluate import evaluate_run
    from cxr.metrics import format_table
    from cxr.train import train

    out = Path(args.out)
    if (out / "config.json").exists():
        raise CxrError(f"{out} already holds a run; remove it or pass --out elsewhere")
    print("cxr demo: SYNTHETIC chest-radiograph phantoms (not real patients), no download needed.")
    cfg = config_from_dict(
        {
            "data": {"path": "synthetic", "format": "synthetic", "synthetic_count": args.n,
                     "test_fraction": 0.2},
            "preprocess": {"image_size": 96},
            "train": {"epochs": args.epochs, "batch_size": 32, "lr": 2e-3,
                      "early_stopping_patience": 0},
            "out_dir": str(out),
        }
    )  # fmt: skip
    result = train(cfg)
    print("validation (synthetic):")
    print(format_table(result.val_metrics))
    data = DataConfig(path="synthetic", format="synthetic", synthetic_count=args.n)
    test = evaluate_run(out, data, out_json=out / "test_metrics.json", split="test")
    print("held-out test split (synthetic, patients never seen in training):")
    print(format_table(test))
    print(f"run folder {out}/: weights, config, split, metrics JSON and ROC/PR plots")
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from cxr.data.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(args.out, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} SYNTHETIC phantoms to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr", description=__doc__)
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
