"""A finished run answering new images: backends (PyTorch, ONNX Runtime), the ONNX export and its
contract, screening of uploads, single images (`Predictor`), uploads with heatmaps (`Analyser`),
and folders in batches (`predict_folder`)."""

from cxr.inference.analysis import Analyser
from cxr.inference.backends import EngineInfo, InferenceEngine, OnnxEngine, TorchEngine
from cxr.inference.batch import FileResult, predict_files
from cxr.inference.contract import check_contract
from cxr.inference.export import ExportResult, export_run
from cxr.inference.folder import FolderResult, predict_folder
from cxr.inference.predictor import Prediction, Predictor, make_engine
from cxr.inference.screening import decode_upload, gate_verdict, load_gate

__all__ = [
    "Analyser",
    "EngineInfo",
    "ExportResult",
    "FileResult",
    "FolderResult",
    "InferenceEngine",
    "OnnxEngine",
    "Prediction",
    "Predictor",
    "TorchEngine",
    "check_contract",
    "decode_upload",
    "export_run",
    "gate_verdict",
    "load_gate",
    "make_engine",
    "predict_files",
    "predict_folder",
]
