"""`cxr export --int8`: a statically quantized ONNX model for fast CPU inference, checked for
accuracy on the run's validation images and refused when it loses more than a hair of AUROC.

Static (not dynamic) quantization: the activation ranges are fixed once, from a calibration pass
over the run's own validation images (ONNX Runtime's MinMax calibrator), so at inference no
range is computed per batch and every convolution runs as an integer kernel (VNNI / AVX-512
where the CPU has it). Weights are quantized per output channel (a ResNet's filters differ by
orders of magnitude in scale; one scale per tensor costs accuracy), activations per tensor as
unsigned 8-bit (the U8S8 kernels ONNX Runtime has for x86).

Two ONNX layouts exist for the same arithmetic: QDQ (QuantizeLinear/DequantizeLinear pairs
around float ops, which ONNX Runtime fuses into integer kernels when it loads the graph) and
QOperator (QLinearConv and friends written out). Both are supported and, with unsigned
activations, ran within each other's noise on the 2-core development CPU (AVX-512 VNNI;
`benchmarks/inference.py` times both side by side); `DEFAULT_FORMAT` is QOperator, the faster
at batch 32 there and in a separate batch-1 check of ResNet-18.

The accuracy check runs the float32 export and the int8 model side by side on every validation
image of the run and compares per-finding AUROC; a mean drop above `AUROC_TOLERANCE` raises a
CxrError that lists each finding, and nothing is written. The calibration images are validation
images too (at most `CALIBRATION_IMAGES` of them, spread over the split): quantization fits no
decision, only ranges, so this is the data the issue asks for and no test data is touched.

Files written beside the float32 export: `model.int8.onnx` and its contract
`model.int8.onnx.json` (the float32 contract with this file's fingerprint and a "quantization"
section), so `cxr.inference.make_engine(run, "onnx", onnx_path=RUN/model.int8.onnx)` checks it the
same way before it loads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cxr.checkpoint import write_json
from cxr.errors import CxrError

INT8_FILE = "model.int8.onnx"
AUROC_TOLERANCE = 0.003  # max mean validation AUROC the int8 model may lose against float32
CALIBRATION_IMAGES = 256  # MinMax ranges settle within a few hundred images
CALIBRATION_BATCH = 16
Int8Format = Literal["qdq", "qoperator"]
QUANT_FORMATS: tuple[str, ...] = ("qdq", "qoperator")
DEFAULT_FORMAT: Int8Format = "qoperator"


@dataclass
class Int8Result:
    onnx_path: Path
    contract_path: Path
    quant_format: str
    calibration_images: int
    fp32_auroc: dict[str, float | None]
    int8_auroc: dict[str, float | None]
    mean_auroc_drop: float
    seconds: float


class PixelsReader:
    """onnxruntime's CalibrationDataReader over preprocessed uint8 images, in small batches."""

    def __init__(
        self,
        pixels: np.ndarray,
        input_name: str,
        batch: int = CALIBRATION_BATCH,
        normalization: tuple[float, float] = (0.5, 0.25),
    ):
        self.pixels, self.input_name, self.batch = pixels, input_name, batch
        self.normalization = normalization  # the run's preprocess (mean, std)
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        from cxr.inference.backends import normalise_numpy

        if self.start >= len(self.pixels):
            return None
        chunk = self.pixels[self.start : self.start + self.batch]
        self.start += self.batch
        return {self.input_name: normalise_numpy(np.ascontiguousarray(chunk), *self.normalization)}

    def rewind(self) -> None:
        self.start = 0


def validation_images(run_dir: str | Path, progress: bool = False):
    """The run's validation images as cxr.data.cache.CachedImages (the training cache when it is
    still there; rebuilt from the files named in split.csv otherwise)."""
    from cxr.data.cache import build_cache
    from cxr.data.prepare import resolve_table
    from cxr.run import read_run_files, split_keys

    run_dir = Path(run_dir)
    cfg, _ = read_run_files(run_dir)
    wanted = split_keys(run_dir, "val")
    table = resolve_table(cfg.data, cfg.train.cache_dir, progress)
    table = table.subset([i for i, key in enumerate(table.keys) if key in wanted])
    if len(table) == 0:
        raise CxrError(
            f"{run_dir}: none of the validation images named in split.csv can be found at "
            f"{cfg.data.path}; int8 calibration and its accuracy check need them"
        )
    return build_cache(
        table, cfg.preprocess, cfg.train.cache_dir, cfg.data.skip_bad, progress=progress
    )


def quantize_run(
    run_dir: str | Path,
    fp32_path: str | Path | None = None,
    quant_format: Int8Format = DEFAULT_FORMAT,
    tolerance: float = AUROC_TOLERANCE,
    calibration_images: int = CALIBRATION_IMAGES,
    calibration: np.ndarray | None = None,
    progress: bool = False,
) -> Int8Result:
    """Quantize the float32 export (default RUN/model.onnx, from `cxr export`) into the int8
    model beside it (model.onnx -> model.int8.onnx).

    calibration: optional uint8 (N, S, S) images to calibrate on instead of the run's
    validation images (the accuracy check always uses the validation images).
    """
    from cxr.inference.backends import read_engine_info
    from cxr.inference.contract import check_contract, file_sha256
    from cxr.run import RunDir

    start = time.perf_counter()
    if quant_format not in QUANT_FORMATS:
        raise CxrError(
            f"int8 format must be one of {', '.join(QUANT_FORMATS)}, got {quant_format!r}"
        )
    if not tolerance >= 0:
        raise CxrError(f"int8 AUROC tolerance must be >= 0, got {tolerance}")
    run_dir = Path(run_dir)
    info = read_engine_info(run_dir)
    fp32_path = Path(fp32_path) if fp32_path is not None else RunDir(run_dir).onnx
    contract = check_contract(info, fp32_path)  # the float32 export must fit this run
    images = validation_images(run_dir, progress)
    pixels, labels = np.asarray(images.pixels), images.table.labels
    if calibration is None:
        # Spread over the split (it is stored grouped by class folder for some sources).
        pick = np.linspace(0, len(pixels) - 1, min(calibration_images, len(pixels))).astype(int)
        calibration = pixels[np.unique(pick)]
    calibration = np.asarray(calibration)
    size = info.image_size
    shape_ok = calibration.ndim == 3 and calibration.shape[1:] == (size, size)
    if calibration.dtype != np.uint8 or not shape_ok or not calibration.size:
        raise CxrError(
            f"calibration images must be uint8 (N >= 1, {size}, {size}), "
            f"got {calibration.dtype} {calibration.shape}"
        )

    out = int8_path(fp32_path)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8-") as tmp:
        candidate = Path(tmp) / out.name
        quantize_onnx(
            fp32_path,
            candidate,
            calibration,
            quant_format,
            (info.preprocess.mean, info.preprocess.std),
        )
        fp32_scores = _scores(fp32_path, pixels, info)
        int8_scores = _scores(candidate, pixels, info)
        fp32_auroc = _auroc(labels, fp32_scores, info)
        int8_auroc = _auroc(labels, int8_scores, info)
        drop = _mean(fp32_auroc) - _mean(int8_auroc)
        if not drop <= tolerance:  # also refuses NaN
            per = ", ".join(
                f"{f} {_show(fp32_auroc[f])} -> {_show(int8_auroc[f])}" for f in info.findings
            )
            raise CxrError(
                f"int8 export of {run_dir} refused: mean validation AUROC drops by {drop:.4f} "
                f"(> {tolerance:g}) on {len(pixels)} images ({per}); nothing was written. "
                "Use the float32 model.onnx, or calibrate on more images"
            )
        os.replace(candidate, out)

    contract_path = out.with_name(out.name + ".json")
    int8_contract = dict(contract) | {
        "onnx_file": out.name,
        "onnx_sha256": file_sha256(out),
        "quantization": {
            "method": "static, onnxruntime.quantization.quantize_static, MinMax calibration",
            "format": quant_format,
            "weights": "int8 per output channel",
            "activations": "uint8 per tensor",
            "from": fp32_path.name,
            "calibration_images": int(len(calibration)),
            "checked_on": f"{len(pixels)} validation images of the run",
            "val_auroc_float32": fp32_auroc,
            "val_auroc_int8": int8_auroc,
            "mean_auroc_drop": drop,
            "tolerance": tolerance,
        },
    }
    write_json(contract_path, int8_contract)
    return Int8Result(
        out,
        contract_path,
        quant_format,
        int(len(calibration)),
        fp32_auroc,
        int8_auroc,
        drop,
        time.perf_counter() - start,
    )


def int8_path(fp32_path: str | Path) -> Path:
    """Where the int8 model of a float32 export goes: model.onnx -> model.int8.onnx."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(fp32_path.stem + ".int8.onnx")


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path,
    calibration: np.ndarray,
    quant_format: str,
    normalization: tuple[float, float] = (0.5, 0.25),
) -> None:
    """onnxruntime static quantization of a float32 cxr export, calibrated on uint8 images
    normalised with the run's (mean, std)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    prepared = out.with_name("prepared.onnx")
    # Shape inference + graph clean-up first: ONNX Runtime's recommended step before static
    # quantization (it lets the quantizer see every tensor's shape and fold what it can).
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    quantize_static(
        str(prepared),
        str(out),
        PixelsReader(calibration, input_name, normalization=normalization),
        quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
        per_channel=True,
        # Unsigned activations with signed weights in both layouts: ONNX Runtime's x86 integer
        # convolutions are U8S8. With signed activations (its QDQ default) the QDQ model ran
        # no faster than float32 here, and QOperator S8S8 5x slower than float32.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # Keep at most a few batches of intermediate outputs in memory while calibrating.
        extra_options={"CalibMaxIntermediateOutputs": 4},
    )
    prepared.unlink(missing_ok=True)


def _scores(onnx_path: Path, pixels: np.ndarray, info, batch: int = 64) -> np.ndarray:
    """Probabilities of an ONNX model (float32 or int8) on uint8 images, as the engine computes
    them (run temperature included)."""
    import onnxruntime as ort

    from cxr.inference.backends import cpu_cores, normalise_numpy
    from cxr.models import probabilities_numpy

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_cores()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    logits = []
    for i in range(0, len(pixels), batch):
        x = normalise_numpy(
            np.ascontiguousarray(pixels[i : i + batch]),
            info.preprocess.mean,
            info.preprocess.std,
        )
        logits.append(session.run([output], {name: x})[0])
    return probabilities_numpy(np.concatenate(logits), info.task, info.temperature)


def _auroc(labels: np.ndarray, scores: np.ndarray, info) -> dict[str, float | None]:
    from cxr.metrics import compute_metrics

    return compute_metrics(labels, scores, info.findings, info.task, info.thresholds)["auroc"]


def _mean(auroc: dict[str, float | None]) -> float:
    values = [v for v in auroc.values() if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def read_int8_report(run_dir: str | Path) -> dict:
    """The quantization section of RUN/model.int8.onnx.json (for the CLI and benchmarks)."""
    path = Path(run_dir) / (INT8_FILE + ".json")
    if not path.is_file():
        raise CxrError(f"{path}: no int8 export; create it with `cxr export --int8`")
    return json.loads(path.read_text())["quantization"]
