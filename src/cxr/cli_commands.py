"""What each `cxr` subcommand does: build the typed config from the parsed flags, call the
modules, print the result. `cxr.cli` holds the argument parser and the entry point.
"""

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
    "val_source": (
        "data",
        "val_source",
        str,
        "auto|fraction|official: auto uses the data's own val split only when it holds "
        ">= 200 images and >= 5%% of train, else splits train by --val-fraction",
    ),
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
    if result.rank != 0:  # under torchrun, rank 0 alone reports (and wrote the run folder)
        return 0
    print(format_table(result.val_metrics))
    print(f"run folder: {result.run_dir} (best epoch {result.best_epoch})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cxr.export import export_run

    result = export_run(args.model, out=args.out, opset=args.opset)
    print(f"wrote {result.onnx_path} and its preprocessing contract {result.contract_path}")
    print(f"onnxruntime vs PyTorch: max |logit difference| {result.max_abs_diff:.2e} on "
          f"{result.verified_on} ({result.seconds:.1f} s)")  # fmt: skip
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.config import DataConfig
    from cxr.evaluate import evaluate_run
    from cxr.metrics import format_table

    data = DataConfig(path=args.data, format=args.format, skip_bad=args.skip_bad)
    metrics = evaluate_run(args.model, data, out_json=args.json, split=args.split,
                           allow_overlap=args.allow_overlap)  # fmt: skip
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


def cmd_serve(args: argparse.Namespace) -> int:
    from cxr.serve.engine import serve_config
    from cxr.serve.server import run_server

    cfg = serve_config(
        {
            "model": args.model, "device": args.device, "max_upload_mb": args.max_upload_mb,
            "max_batch_mb": args.max_batch_mb, "max_pixels": args.max_pixels,
            "save_uploads": args.save_uploads, "web_dir": args.web_dir,
            "ood_gate": not args.no_ood_gate, "backend": args.backend,
        }
    )  # fmt: skip
    run_server(cfg, host=args.host, port=args.port, threads=args.threads)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxr.predict_folder import predict_folder

    result = predict_folder(args.model, args.folder, args.out, force=args.force,
                            max_pixels=args.max_pixels, ood_gate=not args.no_ood_gate,
                            backend=args.backend, batch_size=args.batch_size,
                            workers=args.workers)  # fmt: skip
    print(f"{result.n_ok} image(s) predicted, {result.n_failed} could not be used "
          f"(see the error column); written to {result.out}")  # fmt: skip
    print(f"{result.wall_s:.1f} s from the first file to the CSV (model loading not counted): "
          f"{result.images_per_s:.1f} images/s, {args.backend}, "
          f"batches of {args.batch_size}")  # fmt: skip
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from cxr.config import DataConfig
    from cxr.metrics import format_table
    from cxr.search_space import load_search_space
    from cxr.tune import run_study

    args.out = args.out or f"runs/tune-{args.study}"
    base = build_config(args)
    space = load_search_space(args.space).override(args.epochs, args.sampler, args.pruner)
    test = DataConfig(path=args.test_data, format=args.test_format) if args.test_data else None
    try:
        result = run_study(base, space, args.study, args.storage, args.n_trials, args.timeout,
                           resume=args.resume, test_data=test,
                           allow_overlap=args.allow_overlap)  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked failed; run the same command again to "
              "resume the study", file=sys.stderr)  # fmt: skip
        return 130
    c = result.counts
    print(f"study {result.study_name}: {c['complete']} complete, {c['pruned']} pruned, "
          f"{c['failed']} failed trials, {result.epochs} epochs in all")  # fmt: skip
    if result.best_trial is not None:
        print(f"best: trial {result.best_trial}, validation mean AUROC {result.best_value:.4f}, "
              f"{json.dumps(result.best_params)}")  # fmt: skip
        print(f"best config: {result.best_config} (cxr train --config {result.best_config})")
    if result.best_run is not None:
        print(f"best run (kept): {result.best_run}")
    if result.test_metrics is not None:
        print("best run on held-out test images (after the search):")
        print(format_table(result.test_metrics))
        print(NOT_A_MEDICAL_DEVICE)
    print(f"trials.csv, plots and summary.json in {result.study_dir}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cxr.calibration import CALIBRATION_FILE, calibrate_run

    cal = calibrate_run(args.model, allow_overlap=args.allow_overlap)
    print(f"temperature {cal.temperature:.4f} fitted on {cal.n_images} validation images: "
          f"NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f}, ECE "
          f"{cal.ece_before or 0:.4f} -> {cal.ece_after or 0:.4f}")  # fmt: skip
    print(f"written to {Path(args.model) / CALIBRATION_FILE}: predict, serve and report now "
          "give calibrated probabilities, compared with thresholds chosen on them")  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cxr.config import DataConfig
    from cxr.report import build_report

    data = DataConfig(path=args.data, format=args.format, skip_bad=args.skip_bad)
    report = build_report(args.model, data, out_dir=args.out, split=args.split, tta=args.tta,
                          n_boot=args.bootstrap, seed=args.seed,
                          gallery=not args.no_gallery,
                          allow_overlap=args.allow_overlap)  # fmt: skip
    res = report["results"]
    mean = res["mean_auroc"]
    print(f"{res['n_images']} images ({report['data']['split']}), mean AUROC "
          + ("not estimable" if mean is None else f"{mean:.3f}"))  # fmt: skip
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    print(f"report: {report['paths']['html']} (and {report['paths']['json']})")
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Prediction table plus one Grad-CAM overlay PNG per finding; the run's OOD gate first."""
    from cxr.data.image_io import decode_bytes
    from cxr.explain import heatmaps, save_overlay
    from cxr.inference import Predictor
    from cxr.ood import GATE_FILE, OodGate, OutOfDistributionError, raw_pixels

    path = Path(args.image)
    if not path.is_file():
        raise CxrError(f"image file not found: {path}")
    data = path.read_bytes()
    image = decode_bytes(data, name=str(path))
    predictor = Predictor.from_run_dir(args.model)
    if (Path(args.model) / GATE_FILE).is_file() and not args.no_ood_gate:
        gate = OodGate.load(args.model, run=predictor.run)
        result = gate.check(image, raw=raw_pixels(data))
        if result.refused:
            raise OutOfDistributionError(f"{path}: refused: {result.reason}")
        if not result.ok:
            print(f"warning: {result.reason}; the output below is probably meaningless")
    prediction = predictor.predict(image)
    print(f"{'finding':<22}{'probability':>12}{'threshold':>11}  call")
    for row in prediction.as_dict()["findings"]:
        call = "positive" if row["positive"] else "-"
        print(f"{row['finding']:<22}{row['probability']:>12.3f}{row['threshold']:>11.3f}  {call}")
    findings = args.finding or _explained_findings(prediction)
    maps = heatmaps(predictor, image, findings, args.method, layer=args.layer)
    for finding, heat in maps.items():
        out = _overlay_path(path, args.out, finding, args.method, several=len(maps) > 1)
        save_overlay(out, image, heat)
        empty = " (empty: no evidence for it in this image)" if not heat.any() else ""
        print(f"{args.method} heatmap for {finding}: {out}{empty}")
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def _explained_findings(prediction) -> list[str]:
    """The findings called positive, or the most probable one when none is."""
    positive = [f for f, p in zip(prediction.findings, prediction.positive, strict=True) if p]
    return positive or [prediction.findings[int(prediction.probabilities.argmax())]]


def _overlay_path(image: Path, out: str | None, finding: str, method: str, several: bool) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in finding)
    if out is None:
        return Path(f"{image.stem}_{method.replace('+', 'p')}_{safe}.png")
    out_path = Path(out)
    return out_path.with_name(f"{out_path.stem}_{safe}{out_path.suffix}") if several else out_path


def cmd_ood_fit(args: argparse.Namespace) -> int:
    from cxr.errors import ConfigError
    from cxr.evaluate import load_run
    from cxr.ood import GATE_FILE, OodConfig
    from cxr.ood_fit import fit_ood_gate_for_run, flag_rate, iter_split_images

    try:
        config = OodConfig(action=args.action, percentile=args.percentile)
    except ValueError as exc:
        raise ConfigError(f"ood-fit: {exc}") from None
    gate = fit_ood_gate_for_run(args.model, config, limit=args.limit)
    lim, info = gate.limits, gate.info
    print(f"OOD gate fitted on {info['n_fit']} training images, thresholds at the "
          f"{config.percentile}th percentile of {info['n_calibration']} held-out ones: "
          f"feature distance <= {lim['feature_max']:.3g}, layout distance <= "
          f"{lim['layout_max']:.3g}, midline >= {lim['midline_min']:.3g}")  # fmt: skip
    run = load_run(args.model)
    val = flag_rate(gate, iter_split_images(run, "val", limit=args.check_limit))
    if val["n"]:
        print(f"validation images flagged (false refusals if set to refuse): {val['flagged']} of "
              f"{val['n']} ({100 * val['rate']:.1f}%), by check {val['by_check']}")  # fmt: skip
    print(f"written to {Path(args.model) / GATE_FILE}; inputs that fail will be "
          f"{'refused' if config.action == 'refuse' else 'flagged with a warning'}")  # fmt: skip
    return 0
