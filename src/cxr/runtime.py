"""Where and how tensors run, and the one batched forward pass over preprocessed images.

Training, validation, evaluation, calibration, reports and the OOD gate all get their logits (and
pooled features) from `forward`, so there is one place that decides precision: inference is
always float32, the precision `predict`, `serve` and ONNX Runtime answer in, so thresholds are
chosen in the precision they are applied in. Only the training step uses bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxr.config import RunConfig
from cxr.data.cache import CachedImages
from cxr.distributed import training_batches
from cxr.errors import ConfigError
from cxr.preprocess import normalize, to_unit

__all__ = ["Runtime", "autocast", "batches", "forward", "select_runtime", "to_device", "to_model"]


@dataclass
class Runtime:
    """Where and how tensors run; derived from the config (training) or a --device flag."""

    device: torch.device
    amp: bool  # bf16 autocast for the training step
    channels_last: bool


def select_runtime(device: str = "auto", amp: str = "auto", channels_last: str = "auto") -> Runtime:
    """`device`: auto (a GPU when one is visible), cpu, cuda or cuda:N, checked here so that a run
    trained on a GPU box is used on a laptop with --device auto or cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device!r}: CUDA was asked for but no GPU is visible; "
            "use --device auto or cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    on_gpu = dev.type == "cuda"
    # On CPUs without native bf16 (most laptops, this CI box) autocast is slower than fp32,
    # so "auto" turns bf16 on only on a GPU. Channels-last helps oneDNN's convolutions on the
    # CPU too (measured: ~15% more img/s for ResNet-18 at 128 px on 2 cores), so it is on.
    use_amp = amp == "bf16" or (amp == "auto" and on_gpu and torch.cuda.is_bf16_supported())
    use_cl = channels_last in ("on", "auto")
    return Runtime(dev, use_amp, use_cl)


def training_runtime(cfg: RunConfig, device: str) -> Runtime:
    return select_runtime(device, cfg.train.amp, cfg.train.channels_last)


def autocast(rt: Runtime):
    """bf16 autocast for the training step when the runtime has it; nothing otherwise."""
    return torch.autocast(rt.device.type, dtype=torch.bfloat16) if rt.amp else nullcontext()


def batches(
    images: CachedImages, batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) batches; shuffled when a generator is given (training: no batch
    smaller than 2, see `distributed.training_batches`), in order otherwise."""
    n = len(images.table)
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else None
    labels = images.table.labels
    if order is None:
        bounds = [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    else:
        bounds = training_batches(n, batch_size)
    for batch in bounds:
        index = np.arange(n)[batch]
        if order is not None:
            index = np.sort(order[index])  # sorted: sequential reads from the memory map
        x = torch.from_numpy(np.ascontiguousarray(images.pixels[index]))
        yield x, torch.from_numpy(labels[index])


def to_device(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """t on the runtime's device; on a GPU through pinned memory with a non-blocking copy, so the
    CPU can queue the next steps while the GPU still works (a pageable copy waits for the GPU)."""
    if rt.device.type == "cuda":
        return t.pin_memory().to(rt.device, non_blocking=True)
    return t.to(rt.device)


def to_model(x_uint8: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """uint8 (N, S, S) or (N, 1, S, S) -> float [0, 1] (N, 1, S, S) on the runtime's device.

    The uint8 batch crosses to the device and is converted there: a quarter of the bytes."""
    if x_uint8.ndim == 3:
        x_uint8 = x_uint8[:, None]
    x = to_unit(to_device(x_uint8, rt))
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x


@torch.no_grad()
def forward(
    model: nn.Module,
    pixels: np.ndarray,
    rt: Runtime,
    batch_size: int = 64,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """The one batched inference pass: uint8 (N, S, S) preprocessed images (a memory map is fine)
    -> (logits (N, K), pooled features (N, F)), both float64, in float32 arithmetic.

    `transform` (e.g. a test-time augmentation) applies to the [0, 1] batch before normalising
    with the model's input contract (`Classifier.set_normalization`: the run's mean / std).
    """
    was_training = model.training
    model.eval()
    logits, features = [], []
    bar = tqdm(total=len(pixels), desc=desc, unit="img", disable=not progress, leave=False)
    for start in range(0, len(pixels), batch_size):
        chunk = torch.from_numpy(np.array(pixels[start : start + batch_size], dtype=np.uint8))
        x = to_model(chunk, rt)
        if transform is not None:
            x = transform(x)
        f = model.pooled_features(normalize(x, model.input_mean, model.input_std))
        logits.append(model.head(f).float().cpu().numpy())
        features.append(f.float().cpu().numpy())
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    if not logits:
        k, n_features = model.head.out_features, model.head.in_features
        return np.zeros((0, k)), np.zeros((0, n_features))
    return (np.concatenate(logits).astype(np.float64), np.concatenate(features).astype(np.float64))
