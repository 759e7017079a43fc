"""What several commands share: the train/tune flags that build a RunConfig, and the parent
parsers for --model, --device and --no-ood-gate (one definition each, as torchvision's
references share one parser)."""

from __future__ import annotations

import argparse
import json

from cxr.config import RunConfig, config_from_dict, load_config
from cxr.errors import CxrError
from cxr.runtime import select_runtime

# flag -> config field; every flag is optional and overrides the config file.
TRAIN_FLAGS = {
    "data": ("data", "path", str, "images: a class-folder tree, an NIH folder, a CSV or an .npz"),
    "format": ("data", "format", str, "auto|folder|nih|chexpert|medmnist|synthetic"),
    "limit": ("data", "limit", int, "use at most this many images"),
    "val_fraction": ("data", "val_fraction", float, "share of patients for validation"),
    "split_file": ("data", "split_file", str, "reuse an earlier run's split.csv"),
    "val_source": (
        "data",
        "val_source",
        str,
        "auto|fraction|official: auto uses the data's own val split only when it "
        "holds >= 200 images and >= 5%% of train, else splits train by --val-fraction",
    ),
    "image_size": ("preprocess", "image_size", int, "side of the square model input"),
    "arch": ("model", "arch", str, "resnet18..resnet152|densenet121|efficientnet_b0|convnext_tiny"),
    "pretrained": (
        "model",
        "pretrained",
        str,
        "none|imagenet|PATH to weights|RUN folder to fine-tune",
    ),
    "epochs": ("train", "epochs", int, None),
    "batch_size": ("train", "batch_size", int, None),
    "lr": ("train", "lr", float, "learning rate"),
    "optimizer": ("train", "optimizer", str, "sgd|adam|adamw"),
    "loss": ("train", "loss", str, "auto|bce|weighted_bce|focal|ce"),
    "device": ("train", "device", str, "auto|cpu|cuda|cuda:N"),
    "seed": ("train", "seed", int, None),
    "log": ("train", "log", str, "none|tensorboard|mlflow: also log each epoch there"),
    "out": (None, "out_dir", str, "run folder to create"),
}


def train_flags() -> argparse.ArgumentParser:
    """--config, every TRAIN_FLAGS flag, --skip-bad and --set: what train and tune both take."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", help="a run config (JSON or YAML), e.g. a run's config.json")
    for flag, (_, _, typ, help_) in TRAIN_FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, help=help_)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, and say which")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="any config field, e.g. --set preprocess.clahe_clip_limit=3",
    )
    return p


def model_flag() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", required=True, help="run folder written by `cxr train`")
    return p


def device_flag() -> argparse.ArgumentParser:
    """The device is a property of this machine, never read from the run."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--device", default="auto", help="auto (a GPU when one is visible), cpu, cuda or cuda:N"
    )
    return p


def gate_flag() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--no-ood-gate", action="store_true", help="skip the run's out-of-distribution gate"
    )
    return p


def overlap_flag() -> argparse.ArgumentParser:
    """--allow-overlap, for every command that scores a run on images (cxr.data.leakage)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate even images or patients the run was trained or validated on "
        "(refused by default); the outputs then say so first",
    )
    return p


def data_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", required=True, help="images to evaluate")
    p.add_argument("--format", default="auto", help="auto|folder|nih|chexpert|medmnist|synthetic")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, and say which")
    return p


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


def resolve_device(name: str) -> str:
    """--device as the commands pass it on: checked once (a clear error, no traceback)."""
    return str(select_runtime(name).device)
