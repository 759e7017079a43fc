"""Issue 11, item 5: validation, evaluation, calibration and threshold choice run in float32 even
when training uses bf16 autocast, because `cxr predict`, `cxr serve` and ONNX apply the
thresholds to float32 probabilities. Autocast is forced on the CPU (bf16) to show it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.config import ModelConfig
from cxr.data.cache import CachedImages
from cxr.data.table import ImageTable
from cxr.models import build_model
from cxr.preprocess import model_input
from cxr.runtime import Runtime, autocast, forward
from cxr.train import predict_cached, validation_metrics


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18", pretrained="none"), 2).eval()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 32, 32), dtype=np.uint8)
    true = np.arange(12) % 2
    labels = np.eye(2, dtype=np.float32)[true]
    keys, patients = [f"img{i}.png" for i in range(12)], [f"p{i}" for i in range(12)]
    table = ImageTable(keys, labels, ["NORMAL", "PNEUMONIA"], "multiclass", patients)
    return model, CachedImages(pixels, table, [], Path("in-memory"))


BF16 = Runtime(torch.device("cpu"), amp=True, channels_last=False)  # training's autocast, forced


def _output_dtypes(model) -> tuple[list, object]:
    seen: list[torch.dtype] = []
    handle = model.head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen, handle


def test_predict_cached_ignores_training_autocast(model_and_images):
    model, images = model_and_images
    seen, handle = _output_dtypes(model)
    try:
        scores = predict_cached(model, images, "multiclass", BF16)
    finally:
        handle.remove()
    assert seen and all(d == torch.float32 for d in seen), seen
    with torch.no_grad():  # the float32 forward pass predict/serve/ONNX make
        want = torch.softmax(model(model_input(torch.from_numpy(images.pixels))), 1).numpy()
    np.testing.assert_allclose(scores, want, atol=1e-6)
    with torch.no_grad(), autocast(BF16):  # what the old path gave: visibly different
        bf16 = torch.softmax(model(model_input(torch.from_numpy(images.pixels))).float(), 1)
    assert np.abs(bf16.numpy() - want).max() > 1e-4


def test_validation_thresholds_and_calibration_logits_are_float32(model_and_images):
    model, images = model_and_images
    seen, handle = _output_dtypes(model)
    try:
        metrics, scores = validation_metrics(model, images, "multiclass", BF16)
        logits, _ = forward(model, images.pixels, BF16)  # calibration, reports, OOD
    finally:
        handle.remove()
    assert seen and all(d == torch.float32 for d in seen), seen
    fp32 = predict_cached(model, images, "multiclass", Runtime(torch.device("cpu"), False, False))
    np.testing.assert_array_equal(scores, fp32)
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), fp32, atol=1e-6)
