"""The ONNX export's contract (model.onnx.json): its names, and the check that an ONNX file fits
the run it is served for, field by field, before anything loads it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cxr.config import NORMALIZATION_FIELDS
from cxr.errors import CxrError
from cxr.inference.backends import EngineInfo
from cxr.preprocess import PIPELINE_VERSION

CONTRACT_FORMAT = "cxr-onnx-contract"
# 2: the "features" output; 3: "decision" and "temperature". Versions 1 and 2 still load.
CONTRACT_VERSION = 3
CONTRACT_VERSIONS = (1, 2, 3)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_contract(info: EngineInfo, onnx_path: Path) -> dict:
    """Refuse an ONNX file that does not fit the run: names each field that differs."""
    contract_path = onnx_path.with_name(onnx_path.name + ".json")
    hint = f"re-export with `cxr export --model {info.run_dir}`"
    if not onnx_path.is_file():
        raise CxrError(
            f"{onnx_path}: no ONNX model; create it with `cxr export --model {info.run_dir}`"
        )
    if not contract_path.is_file():
        raise CxrError(f"{contract_path}: the ONNX model has no preprocessing contract; {hint}")
    try:
        contract = json.loads(contract_path.read_text())
        if contract.get("format") != CONTRACT_FORMAT:
            raise ValueError(f"format is {contract.get('format')!r}, not {CONTRACT_FORMAT!r}")
        if contract.get("version") not in CONTRACT_VERSIONS:
            raise ValueError(
                f"version {contract.get('version')!r}, expected one of "
                f"{', '.join(map(str, CONTRACT_VERSIONS))}"
            )
    except (OSError, ValueError, AttributeError) as exc:
        raise CxrError(f"{contract_path}: not a cxr ONNX contract ({exc}); {hint}") from None

    problems = []
    wanted_pre = info.preprocess.model_dump()
    got_pre = dict(contract.get("preprocess") or {})
    norm = contract.get("normalization") or {}
    for key in NORMALIZATION_FIELDS:  # exports before preprocess.mean/std: "normalization" only
        got_pre.setdefault(key, norm.get(key))
    for key in sorted(set(wanted_pre) | set(got_pre)):
        if got_pre.get(key) != wanted_pre.get(key):
            problems.append(
                f"preprocess.{key} is {got_pre.get(key)!r} in the contract but "
                f"{wanted_pre.get(key)!r} in the run's config.json"
            )
    for key in sorted(NORMALIZATION_FIELDS):
        value = wanted_pre[key]
        if norm.get(key) != value:
            problems.append(
                f"normalization.{key} is {norm.get(key)!r}, the run's preprocess.{key} {value}"
            )
    if contract.get("pipeline_version") != PIPELINE_VERSION:
        problems.append(
            f"pipeline_version is {contract.get('pipeline_version')!r}, this cxr preprocesses "
            f"with version {PIPELINE_VERSION}"
        )
    for key, value in (("findings", info.findings), ("task", info.task)):
        if contract.get(key) != value:
            problems.append(f"{key} is {contract.get(key)!r} in the contract, {value!r} here")
    if "decision" in contract and contract["decision"] != info.decision.to_json():
        problems.append(
            f"its decision rule ({(contract['decision'] or {}).get('text')!r}) is not the run's "
            f"({info.decision.describe()!r}; calibration.json changed after export?)"
        )
    if contract.get("model_sha256") != file_sha256(info.run_dir / "model.safetensors"):
        problems.append("it was exported from other weights than the run's model.safetensors")
    if contract.get("onnx_sha256") != file_sha256(onnx_path):
        problems.append(f"{onnx_path.name} was changed after export (sha256 differs)")
    problems += _graph_problems(onnx_path, info)
    if problems:
        raise CxrError(
            f"{onnx_path} does not match the run {info.run_dir}: "
            + "; ".join(problems)
            + f"; {hint}"
        )
    return contract


def _graph_problems(onnx_path: Path, info: EngineInfo) -> list[str]:
    """The graph's own input and output shapes against the run's image size and findings."""
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - any protobuf error means "not a readable model"
        return [f"{onnx_path.name} cannot be read as ONNX ({exc.__class__.__name__})"]

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    if len(graph.input) != 1 or len(graph.output) not in (1, 2):
        return [
            f"the graph has {len(graph.input)} inputs and {len(graph.output)} outputs, "
            "expected one image input, logits and perhaps features"
        ]
    s, k = info.image_size, len(info.findings)
    problems = []
    shape = dims(graph.input[0])
    if len(shape) != 4 or shape[1:] != [1, s, s]:
        problems.append(
            f"its input shape is {_show(shape)} but the run's preprocess.image_size {s} "
            f"needs (batch, 1, {s}, {s})"
        )
    out = dims(graph.output[0])
    if len(out) != 2 or out[1] != k:
        problems.append(f"its output shape is {_show(out)} but the run has {k} findings")
    if len(graph.output) == 2 and len(dims(graph.output[1])) != 2:
        problems.append(
            f"its features output has shape {_show(dims(graph.output[1]))}, expected (batch, F)"
        )
    return problems


def _show(shape: list) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
