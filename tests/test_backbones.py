"""Every registered torchvision backbone family goes end to end through the one adapter: trained
for one tiny epoch on real Kermany images, exported to ONNX (checked against PyTorch), explained
with Grad-CAM at its "last" and "finer" layers, and served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.config import ModelConfig, config_from_dict
from cxr.errors import ConfigError
from cxr.explain import feature_grid, heatmaps
from cxr.inference import Predictor, export_run, make_engine
from cxr.models import ARCHITECTURES, build_model
from cxr.train import train

NEW_BACKBONES = ["densenet121", "efficientnet_b0", "convnext_tiny"]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_adapter_gives_logits_from_the_pooled_features_of_one_pass(arch):
    model = build_model(ModelConfig(arch=arch), 3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        features = model.pooled_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(model.head(features), logits)
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
    assert set(model.cam_layers()) == {"last", "finer"}
    assert feature_grid(model, 64, "finer") == 2 * feature_grid(model, 64, "last")


def test_grey_stem_sums_the_rgb_filters_of_a_pretrained_file(tmp_path):
    """A torchvision DenseNet-121 checkpoint (RGB stem, 1000 classes) seeds a one-channel model
    with its stem summed over RGB, by name, and the 1000-class head skipped."""
    import torchvision
    from safetensors.torch import save_file

    rgb = torchvision.models.densenet121(weights=None)
    save_file(rgb.state_dict(), str(tmp_path / "densenet.safetensors"))
    cfg = ModelConfig(arch="densenet121", pretrained=str(tmp_path / "densenet.safetensors"))
    model = build_model(cfg, 2)
    torch.testing.assert_close(
        model.features.conv0.weight, rgb.features.conv0.weight.sum(1, keepdim=True)
    )
    torch.testing.assert_close(
        model.features.denseblock4.denselayer16.conv2.weight,
        rgb.features.denseblock4.denselayer16.conv2.weight,
    )
    assert model.head.out_features == 2


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW_BACKBONES)
def test_new_backbone_trains_exports_explains_and_serves(arch, kermany_train, tmp_path):
    cfg = config_from_dict(
        {
            "data": {"path": str(kermany_train), "limit": 32, "val_fraction": 0.25},
            "preprocess": {"image_size": 64},
            "model": {"arch": arch},
            "train": {
                "epochs": 1,
                "batch_size": 8,
                "cache_dir": str(tmp_path / "cache"),
                "early_stopping_patience": 0,
            },
            "out_dir": str(tmp_path / "run"),
        }
    )
    run = train(cfg, progress=False).run_dir

    result = export_run(run)  # refuses to write when ONNX Runtime and PyTorch disagree
    assert result.max_abs_diff <= 1e-4
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    torch_probs, torch_features = make_engine(run, "torch").predict_with_features(pixels)
    onnx_probs, onnx_features = make_engine(run, "onnx").predict_with_features(pixels)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)
    np.testing.assert_allclose(onnx_features, torch_features, rtol=1e-4, atol=1e-4)

    predictor = Predictor.from_run_dir(run)
    image = np.random.default_rng(1).random((90, 70)).astype(np.float32)
    for layer in ("last", "finer"):
        maps = heatmaps(predictor, image, ["PNEUMONIA"], layer=layer)
        assert maps["PNEUMONIA"].shape == image.shape
        assert np.isfinite(maps["PNEUMONIA"]).all()

    from cxr.serve import create_app

    client = create_app({"model": str(run), "ood_gate": False}).test_client()
    image_file = next((kermany_train / "NORMAL").glob("*.jpeg"))
    response = client.post(
        "/api/predict?heatmaps=top", data={"file": (image_file.open("rb"), image_file.name)}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert {f["finding"] for f in body["findings"]} == {"NORMAL", "PNEUMONIA"}
    assert list(body["heatmaps"]) == [body["top_finding"]]


def test_every_registered_backbone_is_a_search_space_choice():
    from cxr.tune.space import search_space_from_dict

    raw = {"params": {"model.arch": {"choices": sorted(ARCHITECTURES)}}}
    space = search_space_from_dict(raw)
    assert list(space.params[0].choices) == sorted(ARCHITECTURES)
    with pytest.raises(ConfigError, match="vgg16"):
        search_space_from_dict({"params": {"model.arch": {"choices": ["resnet18", "vgg16"]}}})
