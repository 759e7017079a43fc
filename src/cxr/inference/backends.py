"""One inference interface, two backends: PyTorch eager and ONNX Runtime, chosen by name.

    engine = make_engine("runs/kermany", backend="onnx")      # or "torch"
    probs = engine.predict_batch(pixels)   # uint8 (N, S, S) from cxr.preprocess -> (N, K)

Both backends take the preprocessed uint8 images the training cache holds, normalise them the
same way in float32, and return probabilities after the run's temperature (calibration.json,
when there is one), with the thresholds to compare them against; so a served prediction does
not depend on the backend beyond float rounding (~1e-6).

The ONNX backend checks the export's contract (model.onnx.json, written by `cxr export`)
against the run's config.json and model.json before it builds a session: a different
preprocessing, input size, findings list, or weights raise a CxrError naming what differs.

The batched path for many files, with decoding overlapped with the model, is
`cxr.inference.batch.predict_files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cxr.config import PreprocessConfig, RunConfig
from cxr.decision import DecisionRule, rule_from_json
from cxr.errors import ConfigError
from cxr.models import probabilities_numpy
from cxr.preprocess import MEAN, STD
from cxr.run import LoadedRun, read_run_files

BACKENDS = ("torch", "onnx")


@runtime_checkable
class InferenceEngine(Protocol):
    """What `cxr serve`, `cxr predict` and the benchmarks need from a model."""

    backend: str
    info: EngineInfo

    def predict_logits(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S) preprocessed images -> raw float32 logits (N, K)."""
        ...

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S) preprocessed images -> float64 probabilities (N, K), calibrated."""
        ...


@dataclass(frozen=True)
class EngineInfo:
    """Everything about a run that is needed to use its model, read once from its folder."""

    run_dir: Path
    config: RunConfig
    findings: list[str]
    task: str
    thresholds: np.ndarray  # (K,): calibrated thresholds when calibration.json applies
    temperature: float  # logits are divided by this before sigmoid/softmax (1: uncalibrated)
    model_info: dict = field(default_factory=dict)  # model.json (plus calibration fields)

    @property
    def decision(self) -> DecisionRule:
        """The run's one decision rule (model.json's or calibration.json's "decision" field;
        derived from task and thresholds for runs written before it existed)."""
        return rule_from_json(
            self.model_info.get("decision"), self.task, self.findings, self.thresholds
        )

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.config.preprocess

    @property
    def image_size(self) -> int:
        return self.config.preprocess.image_size


def read_engine_info(run_dir: str | Path) -> EngineInfo:
    """config.json, model.json and calibration.json (when it fits these weights) of a run,
    without loading its weights (what the ONNX backend needs)."""
    run_dir = Path(run_dir)
    cfg, info = read_run_files(run_dir)
    findings = list(info["findings"])
    thresholds = np.array([info["thresholds"][f] for f in findings], dtype=np.float64)
    return _calibrated(EngineInfo(run_dir, cfg, findings, info["task"], thresholds, 1.0, info))


def engine_info(run: LoadedRun) -> EngineInfo:
    """The EngineInfo of a loaded run (cxr.run.LoadedRun, perhaps only in memory), with
    the run folder's calibration.json applied when it fits these weights."""
    thresholds = np.asarray(run.thresholds, dtype=np.float64)
    return _calibrated(
        EngineInfo(
            Path(run.run_dir),
            run.config,
            list(run.findings),
            run.task,
            thresholds,
            1.0,
            dict(run.info),
        )
    )


def _calibrated(info: EngineInfo) -> EngineInfo:
    """The one calibration rule: with calibration.json (fitted on validation), logits are
    divided by its temperature and compared with thresholds chosen on that same scale."""
    from cxr.calibration import load_calibration

    calibration = load_calibration(info.run_dir)
    if calibration is None:
        return info
    return replace(
        info,
        thresholds=calibration.threshold_array(info.findings),
        temperature=float(calibration.temperature),
        model_info=info.model_info
        | {
            "calibration": calibration.method,
            "temperature": float(calibration.temperature),
            "threshold_method": calibration.threshold_method,
            # the calibrated rule; an older calibration.json has none: derived from its
            # thresholds, never model.json's rule on the uncalibrated scale
            "decision": calibration.decision,
        },
    )


def normalise_numpy(pixels: np.ndarray, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """uint8 (N, S, S) -> float32 (N, 1, S, S), (x / 255 - mean) / std (the run's
    preprocess.mean / std): bit for bit what cxr.preprocess.model_input computes in torch (the
    same float32 operations, same order)."""
    x = pixels.astype(np.float32)[:, None]
    x /= np.float32(255.0)
    x -= np.float32(mean)
    x /= np.float32(std)
    return x


class _Engine:
    """Shared input checks and the logits -> probabilities step."""

    backend = "?"

    def __init__(self, info: EngineInfo):
        self.info = info

    @property
    def findings(self) -> list[str]:
        return self.info.findings

    @property
    def thresholds(self) -> np.ndarray:
        return self.info.thresholds

    def check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        s = self.info.image_size
        if not isinstance(pixels, np.ndarray):
            raise ValueError(f"pixels must be a numpy uint8 array, got {type(pixels).__name__}")
        if pixels.ndim == 4 and pixels.shape[1] == 1:
            pixels = pixels[:, 0]
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (s, s):
            raise ValueError(
                f"pixels must be uint8 (N, {s}, {s}) from cxr.preprocess.preprocess with the "
                f"run's config, got {pixels.dtype} {pixels.shape}"
            )
        return np.ascontiguousarray(pixels)

    def predict_logits(self, pixels: np.ndarray) -> np.ndarray:
        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.findings)), dtype=np.float32)
        return self._logits(pixels)

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        logits = self.predict_logits(pixels)
        return probabilities_numpy(logits, self.info.task, self.info.temperature)

    def predict_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, where the backend has them on the way, the pooled features the OOD
        gate scores (float64 (N, F)); None where it has not (an ONNX export of logits only)."""
        return self.predict_batch(pixels), None

    def _logits(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchEngine(_Engine):
    """PyTorch eager, channels-last on the CPU (oneDNN's fastest layout), no autograd."""

    backend = "torch"

    def __init__(self, info: EngineInfo, model, device: str = "cpu"):
        import torch

        super().__init__(info)
        self.device = torch.device(device)
        self.channels_last = True
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _input(self, pixels: np.ndarray):
        import torch

        from cxr.preprocess import model_input

        x = torch.from_numpy(pixels)
        if self.device.type == "cuda":  # uint8 over the bus, pinned: a quarter of the bytes
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = model_input(x, self.info.preprocess)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _logits(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(self._input(pixels)).float().cpu().numpy()

    def predict_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass for both: the pooled features, then the head on them."""
        import torch

        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:
            k = len(self.findings)
            return np.zeros((0, k)), np.zeros((0, self.model.num_features))
        with torch.inference_mode():
            features = self.model.pooled_features(self._input(pixels))
            logits = self.model.head(features).float().cpu().numpy()
        probs = probabilities_numpy(logits, self.info.task, self.info.temperature)
        return probs, features.float().cpu().numpy().astype(np.float64)


class OnnxEngine(_Engine):
    """ONNX Runtime: all graph optimisations, one intra-op thread per core, sequential,
    threads that sleep between calls instead of spinning."""

    backend = "onnx"

    def __init__(
        self,
        info: EngineInfo,
        onnx_path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
    ):
        import onnxruntime as ort

        super().__init__(info)
        self.onnx_path = Path(onnx_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or cpu_cores()
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: the spinning pool took the cores from the threads that
        # decode the next images (and from PyTorch in side-by-side benchmarks), at no gain in
        # latency measured here (17.2 ms without spinning, 17.6 ms with, ResNet-18 at 224 px).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.onnx_path), options, providers=_providers(device, ort)
        )
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = outputs[0]
        # Exports since contract version 2 also give the features the OOD gate scores.
        self.features_name = outputs[1] if len(outputs) > 1 else None

    def _logits(self, pixels: np.ndarray) -> np.ndarray:
        x = normalise_numpy(pixels, self.info.preprocess.mean, self.info.preprocess.std)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def predict_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.features_name is None:  # an export from before the features output
            return super().predict_with_features(pixels)
        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.findings))), None
        logits, features = self.session.run(
            [self.output_name, self.features_name],
            {
                self.input_name: normalise_numpy(
                    pixels, self.info.preprocess.mean, self.info.preprocess.std
                )
            },
        )
        probs = probabilities_numpy(logits, self.info.task, self.info.temperature)
        return probs, features.astype(np.float64)


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask: a container or taskset may allow fewer)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _providers(device: str, ort) -> list[str]:
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"device {device!r}: this onnxruntime has no CUDA provider "
                "(pip install onnxruntime-gpu), or use backend='torch' on the GPU"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "cpu":
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return ["CPUExecutionProvider"]
