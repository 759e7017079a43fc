"""Progressive resizing (small images first, full size last) and the train.compile option."""

from __future__ import annotations

import pytest
import torch

from cxr.config import config_from_dict
from cxr.errors import ConfigError
from cxr.progressive import epoch_image_size, resize_batch


def test_sizes_grow_from_the_start_size_to_the_full_size():
    sizes = [epoch_image_size(e, 6, 128, 64) for e in range(1, 7)]
    # Ramp over half of the 6 epochs: 64, 64 + 64/3 -> 80, 64 + 128/3 -> 96, then 128.
    assert sizes == [64, 80, 96, 128, 128, 128]
    sizes = [epoch_image_size(e, 10, 224, 96, fraction=0.8) for e in range(1, 11)]
    assert sizes[0] == 96 and sizes[-2:] == [224, 224]
    assert sizes == sorted(sizes) and all(s % 16 == 0 for s in sizes)


def test_the_last_epoch_always_trains_at_the_full_size():
    assert [epoch_image_size(e, 2, 128, 64, fraction=1.0) for e in (1, 2)] == [64, 128]
    sizes = [epoch_image_size(e, 4, 128, 64, fraction=1.0) for e in range(1, 5)]
    assert sizes == [64, 80, 96, 128]  # 64 + 64/3 = 85 rounds down to 80
    assert epoch_image_size(1, 1, 128, 64) == 128  # one epoch: nothing to grow over


def test_progressive_resizing_off_or_pointless_gives_the_full_size():
    assert {epoch_image_size(e, 5, 128, None) for e in range(1, 6)} == {128}
    assert {epoch_image_size(e, 5, 128, 128) for e in range(1, 6)} == {128}
    with pytest.raises(ValueError, match=r"epoch must be in 1\.\.5"):
        epoch_image_size(0, 5, 128, 64)
    with pytest.raises(ValueError, match="fraction"):
        epoch_image_size(1, 5, 128, 64, fraction=0.0)


def test_resize_batch_shrinks_on_the_device_and_keeps_the_range():
    x = torch.rand(3, 1, 128, 128)
    small = resize_batch(x, 64)
    assert small.shape == (3, 1, 64, 64) and small.dtype == x.dtype
    assert small.min() >= 0 and small.max() <= 1
    # Antialiased: a 3x shrink of stripes one pixel on, two off comes out grey near 1/3;
    # plain bilinear would sample only the "off" columns and return black.
    stripes = (torch.arange(96) % 3 == 0).float().expand(96, 96)[None, None]
    inner = resize_batch(stripes, 32)[..., 2:-2, 2:-2]
    assert torch.allclose(inner, torch.full_like(inner, 1 / 3), atol=0.05), inner[0, 0, 0, :4]
    assert resize_batch(x, 128) is x


@pytest.mark.parametrize(
    ("train", "preprocess", "message"),
    [
        ({"compile": "maybe"}, {}, r"train\.compile.*'off' or 'on'"),
        ({"compile": True}, {}, r"train\.compile"),
        ({"progressive_start_size": 8}, {}, r"train\.progressive_start_size"),
        ({"progressive_fraction": 0}, {}, r"train\.progressive_fraction"),
        (
            {"progressive_start_size": 256},
            {"image_size": 128},
            r"train\.progressive_start_size 256 is larger than preprocess\.image_size 128",
        ),
    ],
)
def test_bad_speed_options_name_the_field(train, preprocess, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"train": train, "preprocess": preprocess})


def test_speed_options_are_accepted_and_saved():
    cfg = config_from_dict(
        {
            "train": {"compile": "on", "progressive_start_size": 64},
            "preprocess": {"image_size": 128},
        }
    )
    assert cfg.train.compile == "on" and cfg.train.progressive_start_size == 64
    assert config_from_dict({}).train.compile == "off"
    assert config_from_dict({}).train.progressive_start_size is None


@pytest.mark.slow
def test_a_real_run_trains_small_first_validates_at_full_size(kermany_train, tmp_path, monkeypatch):
    """Two epochs on Kermany, 32 -> 48 px: the model sees 32 px batches in epoch 1 and 48 px in
    epoch 2, from one cache at 48 px; validation runs at 48 px; train.compile=on hands the
    training model to torch.compile (recorded here: compiling a ResNet on 2 CPU cores takes
    minutes, so this test checks the hand-over, not the compiler)."""
    import cxr.train as train_module

    seen: list[tuple[bool, int]] = []
    real_build = train_module.build_model

    def recording_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        stem.register_forward_pre_hook(lambda m, inp: seen.append((m.training, inp[0].shape[-1])))
        return model

    compiled = []
    monkeypatch.setattr(train_module, "build_model", recording_build)
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(net) or net)
    cfg = config_from_dict(
        {
            "data": {"path": str(kermany_train), "limit": 96, "val_fraction": 0.25},
            "preprocess": {"image_size": 48},
            "train": {
                "epochs": 2,
                "batch_size": 16,
                "seed": 0,
                "threads": 2,
                "compile": "on",
                "progressive_start_size": 32,
                "cache_dir": str(tmp_path / "cache"),
                "early_stopping_patience": 0,
            },
            "out_dir": str(tmp_path / "run"),
        }
    )
    threads = torch.get_num_threads()
    try:
        result = train_module.train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [row["image_size"] for row in result.history] == [32, 48]
    train_sizes = [size for training, size in seen if training]
    val_sizes = {size for training, size in seen if not training}
    steps = -(-72 // 16)  # 72 training images (96, a quarter held out), batches of 16
    assert train_sizes == [32] * steps + [48] * steps
    assert val_sizes == {48}
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert len(list((tmp_path / "cache").glob("*"))) >= 1
