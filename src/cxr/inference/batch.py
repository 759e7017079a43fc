"""Many files through one engine: a thread pool decodes and preprocesses the next images while
the model answers the current batch (OpenCV and numpy release the GIL).

    for result in predict_files(make_engine("runs/kermany", "onnx"), files, batch_size=32):
        print(result.path, result.probabilities, result.error)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.config import PreprocessConfig
from cxr.errors import CxrError
from cxr.inference.backends import InferenceEngine, cpu_cores


@dataclass
class Prepared:
    """What a worker hands the model: the preprocessed pixels and anything else to keep."""

    pixels: np.ndarray  # uint8 (S, S)
    extra: dict = field(default_factory=dict)  # e.g. the geometry, an OOD score
    decode_s: float = 0.0
    preprocess_s: float = 0.0


@dataclass
class FileResult:
    path: Path
    probabilities: np.ndarray | None  # (K,) calibrated; None when the file failed
    positive: np.ndarray | None  # (K,) the calls of the run's decision rule
    error: str | None
    extra: dict
    decode_s: float = 0.0
    preprocess_s: float = 0.0
    model_s: float = 0.0  # this image's share of its batch's model time


def default_preparer(cfg: PreprocessConfig, max_pixels: int = 40_000_000):
    """path -> Prepared: decode (intensity contract, size limits) then cxr.preprocess."""
    from cxr.data.image_io import decode_image
    from cxr.preprocess import preprocess

    def prepare(path: Path) -> Prepared:
        tick = time.perf_counter()
        image = decode_image(path, max_pixels=max_pixels)
        tock = time.perf_counter()
        pixels = preprocess(image, cfg)
        return Prepared(pixels, {}, tock - tick, time.perf_counter() - tock)

    return prepare


def predict_files(
    engine: InferenceEngine,
    files: Iterable[str | Path],
    batch_size: int = 32,
    workers: int | None = None,
    prepare: Callable[[Path], Prepared] | None = None,
    progress: bool = True,
    screen: Callable[[list[Prepared], np.ndarray | None], list[str | None]] | None = None,
) -> Iterator[FileResult]:
    """Predict every file, in order, batch_size images per model call.

    `workers` threads run `prepare` (default: decode + preprocess) ahead of the model, at most
    2 batches ahead so memory stays bounded. A file whose `prepare` raises CxrError, OSError or
    ValueError yields a FileResult with its error, and the others go on.

    `screen` (e.g. the run's out-of-distribution gate, batched) sees each batch's prepared
    images with the pooled features the model computed on the way to its logits (None where the
    backend has none), and returns, per image, None to keep its prediction or the reason it is
    refused; it may add to each Prepared's `extra`, which the FileResult carries.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    files = [Path(f) for f in files]
    prepare = prepare or default_preparer(engine.info.preprocess)
    workers = workers or cpu_cores()
    ahead = 2 * batch_size + workers
    bar = tqdm(
        total=len(files), desc=f"predict ({engine.backend})", unit="img", disable=not progress
    )

    def safe(path: Path) -> Prepared | str:
        try:
            return prepare(path)
        except (CxrError, OSError, ValueError) as exc:
            return str(exc) or exc.__class__.__name__

    with ThreadPoolExecutor(workers, thread_name_prefix="cxr-prepare") as pool:
        pending = deque()
        todo = iter(files)
        for path in todo:
            pending.append((path, pool.submit(safe, path)))
            if len(pending) >= ahead:
                break
        batch: list[tuple[Path, Prepared | str]] = []
        while pending:
            path, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(safe, nxt)))
            batch.append((path, future.result()))
            if len(batch) == batch_size or not pending:
                yield from _run_batch(engine, batch, screen)
                bar.update(len(batch))
                batch = []
    bar.close()


def _run_batch(engine: InferenceEngine, batch: list, screen=None) -> Iterator[FileResult]:
    ok = [r for _, r in batch if isinstance(r, Prepared)]
    refused: dict[int, str] = {}
    probs, model_s = None, 0.0
    if ok:
        tick = time.perf_counter()
        pixels = _stack([r.pixels for r in ok], engine)
        if screen is None:
            probs = engine.predict_batch(pixels)
        else:  # the gate judges with the features the model computed on the way (if it did)
            probs, features = engine.predict_with_features(pixels)
            verdicts = screen(ok, features)
            refused = {id(r): why for r, why in zip(ok, verdicts, strict=True) if why}
        model_s = (time.perf_counter() - tick) / len(ok)
    row = 0
    rule = engine.info.decision  # the run's one decision rule (cxr.decision)
    for path, result in batch:
        if isinstance(result, str):
            yield FileResult(path, None, None, result, {})
            continue
        p = probs[row]
        row += 1
        if id(result) in refused:
            yield FileResult(
                path,
                None,
                None,
                refused[id(result)],
                result.extra,
                result.decode_s,
                result.preprocess_s,
                model_s,
            )
        else:
            yield FileResult(
                path,
                p,
                rule.calls(p),
                None,
                result.extra,
                result.decode_s,
                result.preprocess_s,
                model_s,
            )


def _stack(images: list[np.ndarray], engine: InferenceEngine) -> np.ndarray:
    """The batch as one array; for a PyTorch engine on a GPU, stacked straight into pinned
    (page-locked) memory, so the copy to the GPU is one DMA that does not wait on a staging
    buffer (the engine's non-blocking copy then finds it already pinned)."""
    device = getattr(engine, "device", None)
    if engine.backend != "torch" or getattr(device, "type", None) != "cuda":
        return np.stack(images)
    import torch

    out = torch.empty((len(images), *images[0].shape), dtype=torch.uint8).pin_memory()
    np.stack(images, out=out.numpy())
    return out.numpy()
