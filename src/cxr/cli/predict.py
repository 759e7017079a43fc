"""`cxr predict`, `cxr explain`, `cxr export`, `cxr serve`, `cxr ood-fit`: using runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.cli.common import device_flag, gate_flag, model_flag, resolve_device
from cxr.cli.serve import COMMANDS as SERVE_COMMANDS
from cxr.errors import ConfigError, CxrError
from cxr.explain import LAYERS, METHODS, heatmaps, save_overlay
from cxr.inference import Predictor, export_run, predict_folder, quantize_run
from cxr.inference.screening import check_colour, decode_upload, gate_verdict, load_gate
from cxr.ood import OodConfig, fit_ood_gate_for_run, flag_rate, iter_split_images
from cxr.run import RunDir, load_run


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a folder (searched recursively) or one image file")
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: ONNX Runtime on RUN/model.onnx (`cxr export` first)",
    )
    p.add_argument("--out", default="predictions.csv", help="CSV to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--batch-size", type=int, default=32, help="images per model call")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads decoding and preprocessing ahead of the model (default: one per core)",
    )
    decode_arguments(p)


def decode_arguments(p: argparse.ArgumentParser) -> None:
    """How images are decoded (cxr.data.image_io.DecodeOptions)."""
    p.add_argument(
        "--frame",
        type=int,
        default=0,
        help="multi-frame DICOM: the frame to read (default 0, the first)",
    )
    p.add_argument(
        "--png-bit-depth",
        default="auto",
        help="16-bit PNG without an sBIT chunk: significant bits (8-16), or auto "
        "(a maximum below 4096 is read as 12-bit, with a warning)",
    )
    p.add_argument(
        "--allow-modality",
        action="store_true",
        help="read DICOM modalities other than CR/DX/DR/RG/OT (CT, MR, ...)",
    )
    p.add_argument(
        "--keep-identifiers",
        action="store_true",
        help="write DICOM patient name, ID, birth date and accession number to the "
        "output (left out by default)",
    )


def decode_options(args: argparse.Namespace):
    """DecodeOptions from the decode flags; ConfigError names a bad one."""
    from pydantic import ValidationError

    from cxr.data.image_io import DecodeOptions

    depth = args.png_bit_depth
    try:
        return DecodeOptions(
            max_pixels=args.max_pixels,
            frame=args.frame,
            png_bit_depth=depth if depth == "auto" else int(depth),
            allow_modality=args.allow_modality,
            keep_identifiers=args.keep_identifiers,
        )
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"--frame / --png-bit-depth: {exc}") from exc


def run_predict(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    result = predict_folder(
        args.model,
        args.folder,
        args.out,
        force=args.force,
        max_pixels=args.max_pixels,
        ood_gate=not args.no_ood_gate,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        decode=decode_options(args),
    )
    print(
        f"{result.n_ok} image(s) predicted, {result.n_failed} could not be used, "
        f"{result.n_skipped} file(s) skipped as not images (see the status and error "
        f"columns); written to {result.out}"
    )
    for line in result.skipped:
        print(f"  skipped {line}")
    print(
        f"{result.wall_s:.1f} s from the first file to the CSV (model loading not counted): "
        f"{result.images_per_s:.1f} images/s, {args.backend} on {device}, "
        f"batches of {args.batch_size}"
    )
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a PNG, JPEG or DICOM file")
    p.add_argument(
        "--finding",
        action="append",
        help="finding to explain (repeatable; default: those called positive, or "
        "the most probable)",
    )
    p.add_argument("--method", default="gradcam", choices=list(METHODS))
    p.add_argument(
        "--layer",
        default="last",
        choices=[*LAYERS, "layer4", "layer3"],
        help="last (usual: S/32 cells a side) or finer (S/16, better on inputs under "
        "~160 px, see README); layer4/layer3 name them on a ResNet",
    )
    p.add_argument(
        "--out",
        help="overlay PNG (with several findings: OUT_<finding>.png; "
        "default ./<image>_<method>_<finding>.png)",
    )
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    decode_arguments(p)


def run_explain(args: argparse.Namespace) -> int:
    """Prediction table plus one Grad-CAM overlay PNG per finding; the same screening as the
    web API (colour photographs refused, the run's OOD gate) first."""
    path = Path(args.image)
    if not path.is_file():
        raise CxrError(f"image file not found: {path}")
    predictor = Predictor.from_run_dir(args.model, device=resolve_device(args.device))
    decoded = decode_upload(path.read_bytes(), str(path), 40_000_000, decode_options(args))
    for warning in decoded.warnings:
        print(f"warning: {warning}")
    check_colour(decoded, str(path))
    prediction, features = predictor.predict_with_features(decoded.image)
    gate, note = (None, "turned off") if args.no_ood_gate else load_gate(args.model, predictor.run)
    if gate is not None:
        result = gate.check_preprocessed(
            prediction.preprocessed, image=decoded.image, raw=decoded.colour, features=features
        )
        ood = gate_verdict(result, str(path))  # raises NotAChestXray when the gate refuses
        if not ood["ok"]:
            print(f"warning: {ood['reason']}; the output below is probably meaningless")
    else:
        print(f"note: input checks are off for this model (out-of-distribution gate: {note})")
    print(f"{'finding':<22}{'probability':>12}{'threshold':>11}  call")
    for row in prediction.as_dict()["findings"]:
        call = "positive" if row["positive"] else "-"
        print(f"{row['finding']:<22}{row['probability']:>12.3f}{row['threshold']:>11.3f}  {call}")
    findings = args.finding or _explained_findings(prediction)
    maps = heatmaps(predictor, decoded.image, findings, args.method, layer=args.layer)
    for finding, heat in maps.items():
        out = _overlay_path(path, args.out, finding, args.method, several=len(maps) > 1)
        save_overlay(out, decoded.image, heat)
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


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="ONNX file to write (default RUN/model.onnx; contract beside it)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write a static int8 model (model.int8.onnx) calibrated on "
        "the run's validation images; refused if it loses AUROC",
    )
    p.add_argument(
        "--int8-format",
        choices=["qoperator", "qdq"],
        default="qoperator",
        help="ONNX layout of the int8 model (qoperator: faster here)",
    )
    p.add_argument(
        "--int8-tolerance",
        type=float,
        default=0.003,
        help="largest mean validation AUROC drop accepted for --int8",
    )


def run_export(args: argparse.Namespace) -> int:
    result = export_run(args.model, out=args.out, opset=args.opset)
    print(f"wrote {result.onnx_path} and its preprocessing contract {result.contract_path}")
    print(
        f"onnxruntime vs PyTorch: max |logit difference| {result.max_abs_diff:.2e} on "
        f"{result.verified_on} ({result.seconds:.1f} s)"
    )
    if args.int8:
        q = quantize_run(args.model, result.onnx_path, args.int8_format, args.int8_tolerance)
        print(
            f"wrote {q.onnx_path} ({q.quant_format}, calibrated on "
            f"{q.calibration_images} validation images, {q.seconds:.1f} s); "
            "validation AUROC float32 -> int8:"
        )
        for finding, before in q.fp32_auroc.items():
            after = q.int8_auroc[finding]
            print(
                f"  {finding}: "
                + ("n/a" if before is None or after is None else f"{before:.4f} -> {after:.4f}")
            )
        print(f"  mean drop {q.mean_auroc_drop:+.4f} (limit {args.int8_tolerance:g})")
    print(NOT_A_MEDICAL_DEVICE)
    return 0


def ood_fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--action",
        default="warn",
        choices=["warn", "refuse"],
        help="what predictions do with an input that fails the gate",
    )
    p.add_argument(
        "--percentile",
        type=float,
        default=99.5,
        help="of held-out training distances, for the thresholds",
    )
    p.add_argument("--limit", type=int, default=2000, help="at most this many training images")
    p.add_argument(
        "--check-limit",
        type=int,
        default=500,
        help="validation images checked after fitting (false refusals)",
    )


def run_ood_fit(args: argparse.Namespace) -> int:
    try:
        config = OodConfig(action=args.action, percentile=args.percentile)
    except ValueError as exc:
        raise ConfigError(f"ood-fit: {exc}") from None
    run = load_run(args.model, resolve_device(args.device))
    gate = fit_ood_gate_for_run(run, config, limit=args.limit)
    lim, info = gate.limits, gate.info
    print(
        f"OOD gate fitted on {info['n_fit']} training images, thresholds at the "
        f"{config.percentile}th percentile of {info['n_calibration']} held-out ones: "
        f"feature distance <= {lim['feature_max']:.3g}, layout distance <= "
        f"{lim['layout_max']:.3g}, midline >= {lim['midline_min']:.3g}"
    )
    val = flag_rate(gate, iter_split_images(run, "val", limit=args.check_limit))
    if val["n"]:
        print(
            f"validation images flagged (false refusals if set to refuse): {val['flagged']} of "
            f"{val['n']} ({100 * val['rate']:.1f}%), by check {val['by_check']}"
        )
    print(
        f"written to {RunDir(args.model).ood_gate}; inputs that fail will be "
        f"{'refused' if config.action == 'refuse' else 'flagged with a warning'}"
    )
    return 0


COMMANDS = {
    "predict": (
        "predict every image in a folder into a CSV",
        predict_arguments,
        run_predict,
        [model_flag, device_flag, gate_flag],
    ),
    "explain": (
        "predict one image and write Grad-CAM overlay PNGs",
        explain_arguments,
        run_explain,
        [model_flag, device_flag, gate_flag],
    ),
    "export": (
        "write the run's model as ONNX + its preprocessing contract",
        export_arguments,
        run_export,
        [model_flag],
    ),
    **SERVE_COMMANDS,
    "ood-fit": (
        "fit the out-of-distribution gate on a run's training images (written into the run folder)",
        ood_fit_arguments,
        run_ood_fit,
        [model_flag, device_flag],
    ),
}
