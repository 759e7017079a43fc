"""`cxr export` and the inference engines: ONNX Runtime agrees with PyTorch on real images, a
mismatched ONNX file is refused before it loads, and folders are predicted in batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_runs import train_kermany_run

from cxr.cli import main
from cxr.data.image_io import decode_image
from cxr.errors import ConfigError, CxrError
from cxr.inference import OnnxEngine, TorchEngine, make_engine
from cxr.inference.batch import predict_files
from cxr.preprocess import preprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(kermany_train, tmp_path_factory) -> Path:
    """A real one-epoch run (32 px) on Kermany images, exported with `cxr export`."""
    root = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    try:
        return train_kermany_run(kermany_train, root, 64, 32, threads=1)
    finally:
        torch.set_num_threads(threads)  # train.threads is process-wide: give it back


@pytest.fixture(scope="module")
def exported(run) -> Path:
    assert main(["export", "--model", str(run)]) == 0
    return run


def _real_images(folder: Path, n: int, cfg) -> tuple[list[Path], np.ndarray]:
    files = sorted((folder / "NORMAL").glob("*.jpeg"))[-n // 2 :]
    files += sorted((folder / "PNEUMONIA").glob("*.jpeg"))[-(n - n // 2) :]
    return files, np.stack([preprocess(decode_image(f), cfg) for f in files])


def test_onnx_runtime_matches_pytorch_on_real_images(exported, kermany_train, capsys):
    contract = json.loads((exported / "model.onnx.json").read_text())
    assert contract["input"]["shape"] == ["batch", 1, 32, 32]
    assert contract["preprocess"]["image_size"] == 32 and contract["preprocess"]["clahe"] is True
    assert contract["normalization"] == {
        "mean": 0.5,
        "std": 0.25,
        "formula": "x = (uint8_pixels / 255 - mean) / std, in float32",
    }
    assert contract["findings"] == ["NORMAL", "PNEUMONIA"] and contract["task"] == "multiclass"
    assert contract["verification"]["on"].endswith("validation images of the run")
    assert contract["verification"]["max_abs_logit_difference"] < 1e-4
    assert "not a medical device" in contract["notice"]

    torch_engine = make_engine(exported, backend="torch")
    onnx_engine = make_engine(exported, backend="onnx")
    assert isinstance(torch_engine, TorchEngine) and isinstance(onnx_engine, OnnxEngine)
    cfg = torch_engine.info.preprocess
    _, pixels = _real_images(kermany_train, 16, cfg)
    for batch in (pixels[:1], pixels):  # the batch axis is dynamic
        a, b = torch_engine.predict_logits(batch), onnx_engine.predict_logits(batch)
        assert a.shape == b.shape == (len(batch), 2)
        assert np.max(np.abs(a - b)) < 1e-4
    probs = onnx_engine.predict_batch(pixels)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)  # softmax over the 2 classes
    np.testing.assert_allclose(probs, torch_engine.predict_batch(pixels), atol=1e-5)
    assert np.array_equal(onnx_engine.thresholds, torch_engine.thresholds)


def test_both_backends_give_the_gate_features_from_the_same_pass(exported, kermany_train):
    """With the OOD gate on, `cxr serve` and `cxr predict` take the gate's features from the
    forward pass that gives the probabilities (PyTorch, and the ONNX graph's second output):
    they must be what the gate would compute on its own."""
    from cxr.ood.gate import penultimate_features
    from cxr.run import load_run

    torch_engine = make_engine(exported, backend="torch")
    _, pixels = _real_images(kermany_train, 6, torch_engine.info.preprocess)
    probs, features = torch_engine.predict_with_features(pixels)
    np.testing.assert_allclose(probs, torch_engine.predict_batch(pixels), atol=1e-6)
    own = penultimate_features(load_run(exported).model, pixels)
    assert features.shape == own.shape == (6, 512)
    np.testing.assert_allclose(features, own, rtol=1e-4, atol=1e-5)
    onnx_probs, onnx_features = make_engine(exported, backend="onnx").predict_with_features(pixels)
    assert np.abs(onnx_probs - probs).max() < 1e-4
    np.testing.assert_allclose(onnx_features, own, rtol=1e-4, atol=1e-5)
    contract = json.loads((exported / "model.onnx.json").read_text())
    assert contract["features"]["shape"] == ["batch", 512] and contract["version"] == 3


def test_an_export_without_the_features_output_still_serves(exported, kermany_train, tmp_path):
    """Exports from contract version 1 (logits only) load; the gate then runs its own pass."""
    import onnx

    from cxr.inference.contract import file_sha256

    copy = _copy(exported, tmp_path)
    model = onnx.load(str(copy / "model.onnx"))
    del model.graph.output[1]
    onnx.save(model, str(copy / "model.onnx"))
    contract = json.loads((copy / "model.onnx.json").read_text())
    contract |= {"version": 1, "onnx_sha256": file_sha256(copy / "model.onnx")}
    del contract["features"]
    (copy / "model.onnx.json").write_text(json.dumps(contract))
    engine = make_engine(copy, backend="onnx")
    _, pixels = _real_images(kermany_train, 2, engine.info.preprocess)
    probs, features = engine.predict_with_features(pixels)
    assert features is None
    full = make_engine(exported, "onnx")
    np.testing.assert_allclose(probs, full.predict_batch(pixels), atol=1e-6)


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints"))
    return out


def _edit_config(run: Path, **preprocess) -> None:
    raw = json.loads((run / "config.json").read_text())
    raw["preprocess"] |= preprocess
    (run / "config.json").write_text(json.dumps(raw))


def test_an_onnx_file_with_another_preprocessing_is_refused(exported, tmp_path):
    copy = _copy(exported, tmp_path)
    _edit_config(copy, clahe_clip_limit=3.0)
    with pytest.raises(
        CxrError, match=r"preprocess\.clahe_clip_limit is 2\.0 in the contract but 3\.0"
    ):
        make_engine(copy, backend="onnx")


def test_an_onnx_file_with_another_input_shape_is_refused(exported, tmp_path):
    copy = _copy(exported, tmp_path)
    _edit_config(copy, image_size=64)
    contract = json.loads((copy / "model.onnx.json").read_text())
    contract["preprocess"]["image_size"] = 64  # even a contract edited to match cannot hide it
    (copy / "model.onnx.json").write_text(json.dumps(contract))
    with pytest.raises(CxrError, match=r"input shape is \(batch, 1, 32, 32\).*image_size 64"):
        make_engine(copy, backend="onnx")


def test_an_onnx_file_from_other_weights_or_without_contract_is_refused(exported, tmp_path):
    copy = _copy(exported, tmp_path)
    weights = load_file(str(copy / "model.safetensors"))
    weights["fc.bias"] = weights["fc.bias"] + 1.0
    save_file(weights, str(copy / "model.safetensors"))
    with pytest.raises(CxrError, match="exported from other weights"):
        make_engine(copy, backend="onnx")
    (copy / "model.onnx.json").unlink()
    with pytest.raises(CxrError, match="no preprocessing contract"):
        make_engine(copy, backend="onnx")
    (copy / "model.onnx").unlink()
    with pytest.raises(CxrError, match="cxr export --model"):
        make_engine(copy, backend="onnx")


def test_the_contract_states_the_runs_one_decision_rule(exported, tmp_path):
    """Issue 11, item 3: ONNX consumers read the same rule as predict and serve, on the scale
    of the probabilities; an export whose rule is no longer the run's (calibrated after
    export) is refused."""
    from cxr.calibration import Calibration, model_fingerprint, save_calibration

    contract = json.loads((exported / "model.onnx.json").read_text())
    info = json.loads((exported / "model.json").read_text())
    assert contract["decision"] == info["decision"]
    assert contract["decision"]["rule"] == "binary"
    assert contract["decision"]["positive_class"] == "PNEUMONIA"
    assert contract["temperature"] == 1.0
    assert contract["thresholds"] == contract["decision"]["thresholds"]
    copy = _copy(exported, tmp_path)
    save_calibration(
        copy,
        Calibration(
            temperature=2.0,
            thresholds={"NORMAL": 0.6, "PNEUMONIA": 0.4},
            n_images=16,
            nll_before=1.0,
            nll_after=0.9,
            ece_before=0.2,
            ece_after=0.1,
            model_sha256=model_fingerprint(copy),
        ),
    )
    with pytest.raises(CxrError, match="decision rule"):
        make_engine(copy, backend="onnx")
    assert main(["export", "--model", str(copy)]) == 0  # re-export: the calibrated rule
    contract = json.loads((copy / "model.onnx.json").read_text())
    assert contract["temperature"] == 2.0 and contract["decision"]["threshold"] == 0.4
    assert make_engine(copy, backend="onnx").info.decision.threshold == 0.4


def test_bad_backend_and_bad_pixels_are_named(exported):
    with pytest.raises(ConfigError, match="backend must be one of torch, onnx"):
        make_engine(exported, backend="tensorrt")
    engine = make_engine(exported, backend="onnx")
    with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32\)"):
        engine.predict_batch(np.zeros((2, 64, 64), dtype=np.uint8))
    assert engine.predict_batch(np.zeros((0, 32, 32), dtype=np.uint8)).shape == (0, 2)


def test_predict_files_batches_in_order_and_reports_bad_files(exported, kermany_train, tmp_path):
    engine = make_engine(exported, backend="onnx")
    files, pixels = _real_images(kermany_train, 5, engine.info.preprocess)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    paths = [*files[:2], bad, *files[2:]]
    results = list(predict_files(engine, paths, batch_size=2, workers=2, progress=False))
    assert [r.path for r in results] == paths
    assert results[2].probabilities is None and "broken.png" in results[2].error
    got = np.stack([r.probabilities for r in results if r.error is None])
    np.testing.assert_allclose(got, engine.predict_batch(pixels), atol=1e-6)
    ok = [r for r in results if r.error is None]
    assert all(r.decode_s > 0 and r.preprocess_s > 0 and r.model_s > 0 for r in ok)
    assert all(np.array_equal(r.positive, r.probabilities >= engine.thresholds) for r in ok)


def test_cli_export_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_serve_and_predict_can_answer_with_onnx_runtime(exported, kermany_train, tmp_path):
    """The ONNX backend behind Predictor (so `cxr serve` and `cxr predict`) gives the same
    probabilities as PyTorch on a real X-ray."""
    from cxr.inference.predictor import Predictor
    from cxr.serve import create_app

    image_path = sorted((kermany_train / "PNEUMONIA").glob("*.jpeg"))[0]
    image = decode_image(image_path)
    torch_pred = Predictor.from_run_dir(exported, backend="torch").predict(image)
    onnx_pred = Predictor.from_run_dir(exported, backend="onnx").predict(image)
    assert np.abs(torch_pred.probabilities - onnx_pred.probabilities).max() < 1e-4

    app = create_app({"model": str(exported), "backend": "onnx", "ood_gate": False})
    response = app.test_client().post(
        "/api/predict?heatmaps=none", data={"file": (open(image_path, "rb"), image_path.name)}
    )
    assert response.status_code == 200, response.get_json()
    probs = {f["finding"]: f["probability"] for f in response.get_json()["findings"]}
    for finding, p in zip(onnx_pred.findings, onnx_pred.probabilities, strict=True):
        assert probs[finding] == pytest.approx(p, abs=1e-6)

    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                str(image_path),
                "--model",
                str(exported),
                "--backend",
                "onnx",
                "--out",
                str(out),
                "--no-ood-gate",
            ]
        )
        == 0
    )
    assert image_path.name in out.read_text()
