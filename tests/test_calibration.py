"""Calibration: ECE, temperature scaling fitted on validation, and its use by the Predictor."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy.special import expit, logit

from cxr.calibration import (
    CALIBRATION_FILE,
    Calibration,
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    load_calibration,
    model_fingerprint,
    negative_log_likelihood,
    reliability_bins,
    save_calibration,
)
from cxr.checkpoint import save_weights, write_json
from cxr.config import config_from_dict, save_config
from cxr.errors import DataError
from cxr.models import build_model


def _overconfident_multilabel(seed=0, n=3000, k=3, sharpen=3.0):
    """Labels drawn from true probabilities; the "model" reports logits `sharpen` times too big."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 1.5, size=(n, k))
    labels = (rng.random((n, k)) < expit(true_logits)).astype(np.float64)
    return true_logits * sharpen, labels


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    logits, labels = _overconfident_multilabel()
    val, test = slice(0, 1500), slice(1500, None)
    temperature = fit_temperature(logits[val], labels[val], "multilabel")
    assert temperature == pytest.approx(3.0, rel=0.15)  # undoes the sharpening

    names = ["a", "b", "c"]
    before, after = (
        calibration_summary(
            labels[test], apply_temperature(logits[test], "multilabel", t), "multilabel", names
        )
        for t in (1.0, temperature)
    )
    assert before["ece"] > 0.08
    assert after["ece"] < before["ece"] / 3
    for name in names:
        assert after["per_finding"][name] < before["per_finding"][name]
    assert negative_log_likelihood(logits[test], labels[test], "multilabel", temperature) < (
        negative_log_likelihood(logits[test], labels[test], "multilabel", 1.0)
    )


def test_temperature_scaling_sharpens_an_underconfident_softmax():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0.0, 2.0, size=(3000, 4))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    classes = (probs.cumsum(axis=1) > rng.random((3000, 1))).argmax(axis=1)
    labels = np.eye(4)[classes]
    logits = true_logits / 2.5  # under-confident
    temperature = fit_temperature(logits, labels, "multiclass")
    assert temperature == pytest.approx(0.4, rel=0.15)
    ece = [
        calibration_summary(
            labels, apply_temperature(logits, "multiclass", t), "multiclass", list("abcd")
        )["ece"]
        for t in (1.0, temperature)
    ]
    assert ece[1] < ece[0] / 3


def test_nan_labels_are_left_out_of_the_fit():
    logits, labels = _overconfident_multilabel(seed=2, n=2000)
    masked = labels.copy()
    masked[::3, 0] = np.nan
    # Garbage logits where the label is unknown must not move T.
    noisy = logits.copy()
    noisy[::3, 0] = 50.0
    assert fit_temperature(noisy, masked, "multilabel") == pytest.approx(
        fit_temperature(logits, masked, "multilabel"), rel=1e-4
    )


def test_ece_and_reliability_bins_on_a_hand_example():
    labels = np.array([1, 0, 1, 1, 0, 0])
    probs = np.array([0.95, 0.92, 0.55, 0.45, 0.05, 0.02])
    bins = reliability_bins(labels, probs, n_bins=2)
    assert bins["count"] == [3, 3]
    assert bins["confidence"] == pytest.approx([(0.45 + 0.05 + 0.02) / 3, (0.95 + 0.92 + 0.55) / 3])
    assert bins["frequency"] == pytest.approx([1 / 3, 2 / 3])
    expected = 0.5 * abs(1 / 3 - 0.52 / 3) + 0.5 * abs(2 / 3 - 2.42 / 3)
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(expected)
    assert expected_calibration_error([], []) is None


def test_apply_temperature_from_probabilities_equals_from_logits():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, size=(50, 3))
    for task, probs in (
        ("multilabel", expit(z)),
        ("multiclass", np.exp(z) / np.exp(z).sum(1, keepdims=True)),
    ):
        a = apply_temperature(z, task, 1.7)
        b = apply_temperature(probs, task, 1.7, inputs="probabilities")
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, "multilabel", 0.0)


# ---------------------------------------------------------------------------------------------
# calibration.json and the Predictor
# ---------------------------------------------------------------------------------------------


def _untrained_run(tmp_path, findings=("Effusion", "Nodule")):
    """A run folder with random weights (no training needed to check the plumbing)."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = config_from_dict({"preprocess": {"image_size": 32}, "out_dir": str(run)})
    save_config(cfg, run / "config.json")
    torch.manual_seed(0)
    save_weights(build_model(cfg.model, len(findings)), run / "model.safetensors")
    write_json(
        run / "model.json",
        {
            "findings": list(findings),
            "task": "multilabel",
            "thresholds": {f: 0.5 for f in findings},
        },
    )
    return run


def _calibration(run, temperature, thresholds):
    return Calibration(
        temperature=temperature,
        thresholds=thresholds,
        n_images=10,
        nll_before=1.0,
        nll_after=0.9,
        ece_before=0.2,
        ece_after=0.1,
        model_sha256=model_fingerprint(run),
    )


def test_predictor_applies_the_saved_temperature_and_its_thresholds(tmp_path):
    from cxr.inference.predictor import Predictor

    run = _untrained_run(tmp_path)
    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    raw = Predictor.from_run_dir(run).predict(image)
    assert Predictor.from_run_dir(run).temperature == 1.0

    temperature = 2.5
    # The raw thresholds (0.5 each) mapped onto the calibrated scale: the same calls.
    mapped = {f: float(expit(logit(0.5) / temperature)) for f in raw.findings}
    mapped["Nodule"] = float(expit(logit(0.3) / temperature))
    save_calibration(run, _calibration(run, temperature, mapped))
    predictor = Predictor.from_run_dir(run)
    calibrated = predictor.predict(image)

    assert predictor.temperature == temperature
    np.testing.assert_allclose(
        calibrated.probabilities, expit(logit(raw.probabilities) / temperature), atol=1e-5
    )
    np.testing.assert_allclose(calibrated.thresholds, [mapped["Effusion"], mapped["Nodule"]])
    raw_calls = raw.probabilities >= np.array([0.5, 0.3])
    assert (calibrated.positive == raw_calls).all()
    assert predictor.run.info["temperature"] == temperature


def test_calibration_for_other_weights_is_ignored_with_a_warning(tmp_path):
    run = _untrained_run(tmp_path)
    save_calibration(run, _calibration(run, 2.0, {"Effusion": 0.4, "Nodule": 0.4}))
    assert load_calibration(run).temperature == 2.0
    torch.manual_seed(1)  # retrained (e.g. resumed) weights: the fit no longer applies
    cfg = config_from_dict({"preprocess": {"image_size": 32}})
    save_weights(build_model(cfg.model, 2), run / "model.safetensors")
    with pytest.warns(UserWarning, match="fitted for other weights"):
        assert load_calibration(run) is None


def test_malformed_calibration_file_names_the_file(tmp_path):
    run = _untrained_run(tmp_path)
    (run / CALIBRATION_FILE).write_text(json.dumps({"temperature": "hot"}))
    with pytest.raises(DataError, match=CALIBRATION_FILE):
        load_calibration(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (run / CALIBRATION_FILE).unlink()
        assert load_calibration(run) is None
