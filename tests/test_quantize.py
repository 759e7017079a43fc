"""`cxr export --int8`: a static int8 ONNX model of a real run, checked against float32 on the
run's validation images, served through the same engine; refused when it loses AUROC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_runs import train_kermany_run

from cxr.cli import main
from cxr.errors import CxrError
from cxr.inference import make_engine
from cxr.inference.quantize import int8_path, quantize_run, validation_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(kermany_train, tmp_path_factory) -> Path:
    """A real run (ResNet-18, 1 epoch, 400 Kermany images at 48 px), exported to float32 ONNX."""
    root = tmp_path_factory.mktemp("int8")
    threads = torch.get_num_threads()
    try:
        run_dir = train_kermany_run(kermany_train, root, 400, 48, threads=2)
    finally:
        torch.set_num_threads(threads)
    assert main(["export", "--model", str(run_dir)]) == 0
    return run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints"))
    return out


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_int8_export_round_trip_on_a_real_run(run, tmp_path, fmt):
    copy = _copy(run, tmp_path)
    result = quantize_run(copy, quant_format=fmt)
    assert result.onnx_path == copy / "model.int8.onnx" and result.onnx_path.is_file()
    graph = onnx.load(str(result.onnx_path)).graph
    ops = {node.op_type for node in graph.node}
    # The convolutions really are integer: QDQ pairs around them, or QLinearConv itself.
    assert (
        ("QLinearConv" in ops)
        if fmt == "qoperator"
        else ({"QuantizeLinear", "DequantizeLinear"} <= ops)
    )
    weights = {i.name: i for i in graph.initializer}
    assert any(w.data_type == onnx.TensorProto.INT8 for w in weights.values())

    contract = json.loads((copy / "model.int8.onnx.json").read_text())
    q = contract["quantization"]
    assert q["format"] == fmt and q["from"] == "model.onnx"
    n_val = len(validation_images(copy).table)
    assert q["checked_on"] == f"{n_val} validation images of the run"
    assert q["calibration_images"] == min(256, n_val)
    assert set(q["val_auroc_int8"]) == {"NORMAL", "PNEUMONIA"}
    assert q["mean_auroc_drop"] == pytest.approx(result.mean_auroc_drop)
    assert result.mean_auroc_drop <= 0.003

    # The engine checks the int8 file's contract like the float32 one, and the two agree.
    fp32 = make_engine(copy, "onnx")
    int8 = make_engine(copy, "onnx", onnx_path=int8_path(copy / "model.onnx"))
    pixels = np.asarray(validation_images(copy).pixels[:16])
    a, b = fp32.predict_batch(pixels), int8.predict_batch(pixels)
    assert b.shape == a.shape == (16, 2)
    assert np.abs(a - b).max() < 0.1  # int8 rounding, not a different model
    assert not np.array_equal(a, b)  # ...but it did quantize


def test_int8_export_is_refused_when_calibration_ruins_it(run, tmp_path):
    """Calibrated on one black image, the activation ranges clip every real X-ray: the check on
    the validation images catches the AUROC loss, names each finding, and writes nothing."""
    copy = _copy(run, tmp_path)
    black = np.zeros((1, 48, 48), dtype=np.uint8)
    with pytest.raises(
        CxrError,
        match=r"int8 export of .* refused: mean validation AUROC "
        r"drops by .*NORMAL .* -> .*PNEUMONIA",
    ):
        quantize_run(copy, calibration=black)
    assert not (copy / "model.int8.onnx").exists()
    assert not (copy / "model.int8.onnx.json").exists()
    assert not list(copy.glob(".int8-*"))  # no temporary files left behind


def test_int8_export_without_a_float32_export_or_with_bad_options(run, tmp_path):
    copy = _copy(run, tmp_path)
    with pytest.raises(CxrError, match="int8 format must be one of qdq, qoperator"):
        quantize_run(copy, quant_format="int4")
    with pytest.raises(CxrError, match="tolerance must be >= 0"):
        quantize_run(copy, tolerance=-0.1)
    (copy / "model.onnx").unlink()
    with pytest.raises(CxrError, match="no ONNX model; create it with `cxr export"):
        quantize_run(copy)


def test_cli_export_int8_prints_auroc_per_finding(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    assert main(["export", "--model", str(copy), "--int8"]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx" in out and "NORMAL: 0." in out and "mean drop" in out
    assert (copy / "model.int8.onnx").is_file()
    assert main(["export", "--model", str(copy), "--int8", "--int8-tolerance", "-1"]) == 2
    assert "tolerance must be >= 0" in capsys.readouterr().err
