"""`--pretrained imagenet` for every backbone family: from the torch hub cache, offline; and a
clear OfflineError before any data work (and no run folder) when the weights are not cached."""

from __future__ import annotations

import re
import urllib.error

import pytest
import torch

from cxr.cli import main
from cxr.config import ModelConfig
from cxr.errors import OfflineError
from cxr.models import ARCHITECTURES, build_model
from cxr.models.registry import imagenet_cache_file

FAMILIES = ["resnet18", "densenet121", "efficientnet_b0", "convnext_tiny"]


def _old_densenet_keys(state: dict) -> dict:
    """torchvision's DenseNet ImageNet files use the pre-0.4 names (norm.1, conv.2, ...)."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|"
        r"running_mean|running_var))$"
    )
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        out[f"{m.group(1)}.{m.group(2)}" if m else key] = value
    return out


@pytest.mark.parametrize("arch", FAMILIES)
def test_imagenet_weights_load_from_the_hub_cache_for_every_family(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # no network: a download attempt fails the test
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download")
    )
    entry = ARCHITECTURES[arch]
    torch.manual_seed(1)
    reference = entry.build(weights=None)  # random weights standing in for ImageNet's
    state = reference.state_dict()
    if arch.startswith("densenet"):
        state = _old_densenet_keys(state)
    cache = imagenet_cache_file(entry.weights)
    assert cache.parent == tmp_path / "hub" / "checkpoints"
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)

    model = build_model(ModelConfig(arch=arch, pretrained="imagenet"), 2)
    # the grey stem is the sum of the cached RGB filters; every other backbone tensor is cached
    stem_ref = next(m for m in reference.modules() if isinstance(m, torch.nn.Conv2d))
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.allclose(stem.weight, stem_ref.weight.sum(dim=1, keepdim=True))
    ours, theirs = model.state_dict(), reference.state_dict()
    shared = [k for k in theirs if k in ours and ours[k].shape == theirs[k].shape]
    assert len(shared) > 0.9 * len(theirs)
    for key in shared:
        assert torch.equal(ours[key], theirs[key]), key


def test_offline_and_uncached_fails_before_any_data_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out = tmp_path / "run"
    # a data path that does not exist: reaching the data would be a different error
    code = main(
        [
            "train",
            "--pretrained",
            "imagenet",
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == OfflineError.exit_code and "could not download ImageNet weights" in err
    assert "hub/checkpoints/resnet18-" in err  # says where the cache file would be
    assert not out.exists()
    with pytest.raises(OfflineError):
        build_model(ModelConfig(arch="densenet121", pretrained="imagenet"), 2)
