"""One image in, probabilities out: the path shared by `cxr predict`, the web API and reports.

It runs exactly the training-time preprocessing (`cxr.preprocess.preprocess`) on the decoded
image, so a served prediction sees the same pixels the model was validated on.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.decision import DecisionRule
from cxr.errors import ConfigError
from cxr.inference.backends import (
    BACKENDS,
    InferenceEngine,
    OnnxEngine,
    TorchEngine,
    engine_info,
    read_engine_info,
)
from cxr.inference.contract import check_contract
from cxr.preprocess import Geometry, model_input, preprocess_with_geometry
from cxr.run import LoadedRun, RunDir, load_run, read_run_files

# uint8 (N, S, S) preprocessed images -> (probabilities (N, K), features (N, F) or None)
Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class Prediction:
    """Per-finding probabilities and calls at the run's validation thresholds."""

    findings: list[str]
    probabilities: np.ndarray  # (K,)
    thresholds: np.ndarray  # (K,)
    preprocessed: np.ndarray  # (S, S) uint8: what the model saw
    geometry: Geometry  # to map model-space heatmaps back onto the original image
    seconds: float
    decision: DecisionRule | None = None  # the run's rule; None: per finding at thresholds

    @property
    def positive(self) -> np.ndarray:
        if self.decision is None:
            return self.probabilities >= self.thresholds
        return self.decision.calls(self.probabilities)

    @property
    def top_finding(self) -> str:
        """The called class of a single-label run; the most probable finding otherwise."""
        if self.decision is None:
            return self.findings[int(np.argmax(self.probabilities))]
        return self.findings[int(self.decision.top(self.probabilities)[0])]

    def as_dict(self) -> dict:
        order = np.argsort(-self.probabilities)
        return {
            "findings": [
                {
                    "finding": self.findings[i],
                    "probability": float(self.probabilities[i]),
                    "threshold": float(self.thresholds[i]),
                    "positive": bool(self.positive[i]),
                }
                for i in order
            ],
            "top_finding": self.top_finding,
            "decision": self.decision.to_json()["text"] if self.decision is not None else None,
            "seconds": self.seconds,
            "notice": NOT_A_MEDICAL_DEVICE,
        }


class Predictor:
    """A loaded run, ready to answer single images quickly (model loaded once)."""

    def __init__(self, run: LoadedRun, device: str = "cpu", backend: str = "torch"):
        # Probabilities come from cxr.inference.backends, the one interface behind serve, predict
        # and the
        # benchmarks: PyTorch (this model) or ONNX Runtime (RUN/model.onnx from `cxr export`,
        # whose contract is checked against the run first). The engine applies the run's
        # calibration (temperature and thresholds); `run` here carries the same thresholds.
        self.backend = backend
        self.device = torch.device(device)
        self.engine = make_engine(run, backend=backend, device=device)
        info = self.engine.info
        self.temperature = info.temperature
        self.run = dataclasses.replace(run, thresholds=info.thresholds, info=info.model_info)
        self._model_lock = threading.Lock()
        self._model = run.model
        if self._model is None and getattr(self.engine, "features_name", None) is None:
            self.model.eval()  # an ONNX export without features: the OOD gate needs torch
        elif self._model is not None:
            self._model = self._model.to(self.device).eval()

    @property
    def model(self):
        """The PyTorch model (Grad-CAM on either backend). On ONNX Runtime it is built on first
        use: a server that is never asked for a heatmap keeps no torch copy of the weights."""
        with self._model_lock:
            if self._model is None:
                self._model = load_run(self.run.run_dir, device=self.device).model.eval()
                self.run = dataclasses.replace(self.run, model=self._model)
            return self._model

    @property
    def model_built(self) -> bool:
        """False while an ONNX predictor has not needed its PyTorch model yet."""
        return self._model is not None

    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, device: str = "cpu", backend: str = "torch"
    ) -> Predictor:
        if backend == "onnx":  # the engine needs the run's files only, not its torch model
            cfg, info = read_run_files(run_dir)
            findings = list(info["findings"])
            thresholds = np.array([info["thresholds"][f] for f in findings], dtype=np.float64)
            run = LoadedRun(Path(run_dir), cfg, None, findings, info["task"], thresholds, info)
            return cls(run, device, backend)
        return cls(load_run(run_dir, device=device), device, backend)

    @property
    def findings(self) -> list[str]:
        return self.run.findings

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Decoded image (intensity contract) -> the model's uint8 input and its geometry."""
        return preprocess_with_geometry(image, self.run.config.preprocess)

    def input_tensor(self, preprocessed: np.ndarray) -> torch.Tensor:
        return model_input(torch.from_numpy(preprocessed)[None], self.run.config.preprocess).to(
            self.device
        )

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_with_features(image)[0]

    @torch.no_grad()
    def predict_with_features(
        self, image: np.ndarray, forward: Forward | None = None
    ) -> tuple[Prediction, np.ndarray | None]:
        """The prediction and, on the PyTorch backend, the pooled features of the same forward
        pass ((1, F) float64, what the OOD gate scores); None on ONNX Runtime.

        `forward` runs the model on the (1, S, S) input instead of the engine itself: the web
        server's micro-batcher, which answers concurrent requests with one call."""
        start = time.perf_counter()
        pixels, geometry = self.prepare(image)
        probs, features = (forward or self.engine.predict_with_features)(pixels[None])
        prediction = Prediction(
            self.findings,
            probs[0].astype(np.float64),
            self.run.thresholds,
            pixels,
            geometry,
            time.perf_counter() - start,
            self.engine.info.decision,
        )
        return prediction, features


def make_engine(
    run,
    backend: str = "torch",
    device: str = "cpu",
    onnx_path: str | Path | None = None,
    threads: int | None = None,
) -> InferenceEngine:
    """An engine for a finished run folder (or a cxr.run.LoadedRun, reusing its model).

    backend: "torch" or "onnx". For "onnx", onnx_path defaults to RUN/model.onnx and its
    contract (model.onnx.json beside it) is checked against the run before anything loads.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    loaded = None if isinstance(run, (str, Path)) else run
    run_dir = Path(loaded.run_dir if loaded is not None else run)
    info = read_engine_info(run_dir) if loaded is None else engine_info(loaded)
    if backend == "onnx":
        onnx_path = Path(onnx_path) if onnx_path is not None else RunDir(run_dir).onnx
        check_contract(info, onnx_path)
        return OnnxEngine(info, onnx_path, device, threads)
    if loaded is None:
        loaded = load_run(run_dir, device="cpu")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchEngine(info, loaded.model, device)
