"""`cxr export --model RUN`: the run's ResNet as ONNX, with its preprocessing contract beside it.

Two files land in the run folder:

- `model.onnx`: float32 input "image" (batch, 1, S, S), already normalised as in training
  ((uint8 / 255 - mean) / std, the run's preprocess.mean / std), outputs "logits" (batch, K)
  and "features" (batch, F), the
  pooled layer4 that the OOD gate scores (so serving with ONNX Runtime needs no second pass
  for the gate; a consumer that wants logits only asks for them and the runtime skips the
  rest). The batch axis is dynamic.
  Exported with torch's dynamo (torch.export) exporter at opset 18: the exporter's default
  and tested opset, well inside what onnxruntime 1.2x-1.3x runs (it reads opsets up to 23);
  a ResNet needs nothing newer than opset 13 (Conv, BatchNorm folded, Relu, MaxPool, Add,
  GlobalAveragePool, Gemm). Weights are stored inside the file (no `.onnx.data` sidecar):
  even a ResNet-152 is far below protobuf's 2 GB limit, and one file cannot lose its half.
- `model.onnx.json`: the contract a consumer needs to feed the graph the same pixels the model
  was validated on: the PreprocessConfig (mean / std included) and pipeline version, the input
  and output
  shapes, findings, task and thresholds, and sha256 fingerprints of both model.safetensors and
  model.onnx, so `cxr.inference.make_engine(..., backend="onnx")` refuses a stale or edited export.

The export is verified before anything is written in place: onnxruntime and PyTorch must give
the same logits to within VERIFY_TOLERANCE on real validation images of the run when their
files are readable (a seeded random batch otherwise), and the measured difference is recorded.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.checkpoint import write_json
from cxr.errors import CxrError
from cxr.inference.contract import (
    CONTRACT_FORMAT,
    CONTRACT_VERSION,
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    file_sha256,
)
from cxr.preprocess import PIPELINE_VERSION
from cxr.run import LoadedRun, RunDir, load_run

OPSET = 18
VERIFY_TOLERANCE = 1e-4  # max |logit difference|; float32 reorderings give ~1e-6
_VERIFY_IMAGES = 8
_EXAMPLE_BATCH = 2  # torch.export specialises a dimension traced at size 1, so trace at 2


@dataclass
class ExportResult:
    onnx_path: Path
    contract_path: Path
    max_abs_diff: float  # max |onnxruntime - torch| over the verification logits
    verified_on: str  # what the check ran on ("8 validation images of the run", ...)
    seconds: float


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    opset: int = OPSET,
    images: np.ndarray | None = None,
) -> ExportResult:
    """Export the finished run in run_dir to ONNX (default run_dir/model.onnx) + its contract.

    images: optional uint8 (N, S, S) preprocessed images to verify on; by default up to 8 of
    the run's validation images (from split.csv) when their files are readable.
    """
    start = time.perf_counter()
    run = load_run(run_dir, device="cpu")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else RunDir(run_dir).onnx
    if out.is_dir() or out.suffix != ".onnx":
        raise CxrError(f"--out {out}: expected a file name ending in .onnx")
    size = run.config.preprocess.image_size
    verified_on = "caller's images"
    if images is None:
        images, verified_on = _verification_images(run_dir, run.config.preprocess)
    images = _check_pixels(images, size)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    try:
        export_model(run.model, tmp, size, opset)
        diff = max_abs_difference(run.model, tmp, images)
        if not diff <= VERIFY_TOLERANCE:  # also catches NaN
            raise CxrError(
                f"ONNX export of {run_dir} disagrees with PyTorch: max |logit difference| "
                f"{diff:.3g} > {VERIFY_TOLERANCE:g} on {verified_on}; nothing was written"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

    contract = build_contract(run, out, opset, diff, verified_on)
    contract_path = out.with_name(out.name + ".json")
    write_json(contract_path, contract)
    return ExportResult(out, contract_path, diff, verified_on, time.perf_counter() - start)


class _LogitsAndFeatures(torch.nn.Module):
    """The run's ResNet with its pooled layer4 as a second output (the same single pass)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.pooled_features(x)
        return self.model.head(features), features


def export_model(model: torch.nn.Module, path: str | Path, image_size: int, opset: int = OPSET):
    """torch.onnx.export (dynamo) of (N, 1, S, S) -> logits (N, K), features (N, F), with a
    dynamic batch axis."""
    model = _LogitsAndFeatures(model.to("cpu", memory_format=torch.contiguous_format)).eval()
    example = torch.zeros(_EXAMPLE_BATCH, 1, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    # The exporter narrates each step on stdout; a CLI command should print only its result.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, FEATURES_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)


def max_abs_difference(model: torch.nn.Module, onnx_path: str | Path, pixels: np.ndarray) -> float:
    """max |onnxruntime - torch| on uint8 (N, S, S) preprocessed images, over the logits and
    the features (both feed decisions: the calls and the OOD gate)."""
    import onnxruntime as ort

    from cxr.inference.backends import normalise_numpy

    x = normalise_numpy(pixels, model.input_mean, model.input_std)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits, features = session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x})
    with torch.no_grad():
        model = model.eval()
        want_features = model.pooled_features(torch.from_numpy(x)).float()
        want_logits = model(torch.from_numpy(x)).float().numpy()
    logit_diff = np.max(np.abs(logits.astype(np.float64) - want_logits))
    feature_diff = np.max(np.abs(features.astype(np.float64) - want_features.numpy()))
    return float(max(logit_diff, feature_diff))


def build_contract(
    run: LoadedRun, onnx_path: Path, opset: int, diff: float, verified_on: str
) -> dict:
    """What a consumer needs to feed the ONNX graph exactly what the model was validated on."""
    import onnxruntime as ort

    from cxr.inference.backends import engine_info

    size = run.config.preprocess.image_size
    # The rule every call is made by, on the scale the probabilities are given in (calibrated
    # when calibration.json fits these weights): one field a consumer reads, "decision".
    info = engine_info(run)
    decision = info.decision.to_json()
    return {
        "format": CONTRACT_FORMAT,
        "version": CONTRACT_VERSION,
        "onnx_file": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "model_sha256": file_sha256(run.files.weights),
        "opset": opset,
        "arch": run.config.model.arch,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 1, size, size],
            "dtype": "float32",
            "layout": "NCHW, one grey channel",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(run.findings)],
            "dtype": "float32",
            "meaning": (
                "logits; probabilities = sigmoid(logits / T) per finding (multilabel) or "
                "softmax(logits / T) over classes (multiclass), T from calibration.json or 1"
            ),
        },
        "features": {
            "name": FEATURES_NAME,
            "shape": ["batch", int(run.model.num_features)],
            "dtype": "float32",
            "meaning": "the pooled features before the head, which the OOD gate (ood.json) scores",
        },
        "normalization": {
            "mean": run.config.preprocess.mean,
            "std": run.config.preprocess.std,
            "formula": "x = (uint8_pixels / 255 - mean) / std, in float32",
        },
        "preprocess": run.config.preprocess.model_dump(),
        "pipeline_version": PIPELINE_VERSION,
        "preprocess_steps": (
            "decode to float32 [0, 1] grey (cxr.data.image_io), then cxr.preprocess.preprocess: "
            "resize keeping the aspect ratio, CLAHE, optional filter, pad/crop to S x S, uint8"
        ),
        "findings": list(run.findings),
        "task": run.task,
        "temperature": float(info.temperature),
        "decision": decision,
        "thresholds": decision["thresholds"],
        "threshold_method": info.model_info.get("threshold_method", "validation split"),
        "verification": {
            "max_abs_logit_difference": diff,  # logits and features alike
            "tolerance": VERIFY_TOLERANCE,
            "on": verified_on,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        },
        "cxr_version": __version__,
        "notice": NOT_A_MEDICAL_DEVICE,
    }


def _verification_images(run_dir: Path, cfg) -> tuple[np.ndarray, str]:
    """Up to 8 of the run's validation images, preprocessed; a seeded random batch if none."""
    from cxr.data.image_io import decode_image
    from cxr.preprocess import preprocess

    pixels = []
    split = RunDir(run_dir).split
    if split.is_file():
        with open(split, newline="") as fh:
            keys = [row.get("key", "") for row in csv.DictReader(fh) if row.get("split") == "val"]
        for key in keys:
            if len(pixels) == _VERIFY_IMAGES:
                break
            if not Path(key).is_file():
                continue
            try:
                pixels.append(preprocess(decode_image(key), cfg))
            except (CxrError, ValueError, OSError):
                continue
    if pixels:
        return np.stack(pixels), f"{len(pixels)} validation images of the run"
    rng = np.random.default_rng(0)
    size = cfg.image_size
    shape = (_VERIFY_IMAGES, size, size)
    return rng.integers(0, 256, size=shape, dtype=np.uint8), "8 seeded random images"


def _check_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (size, size):
        raise CxrError(
            f"verification images must be uint8 (N, {size}, {size}), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    if len(pixels) == 0:
        raise CxrError("verification images: need at least one image")
    return pixels
