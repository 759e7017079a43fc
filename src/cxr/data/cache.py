"""Preprocessed images on disk, keyed by a hash of the inputs and the preprocessing config.

The first build decodes and preprocesses every image once (in parallel for files) into
`<cache_dir>/<key>.npy`, a uint8 (N, S, S) array; every later epoch and every later run with the
same images and config opens it as a read-only memory map, decoding no file and recomputing no
CLAHE. The .npy is written under a temporary name and renamed into place when complete, so a
killed build never leaves a half-written cache that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxr.config import NORMALIZATION_FIELDS, PreprocessConfig, config_hash
from cxr.data import table as table_module
from cxr.data.table import ImageTable
from cxr.errors import DataError
from cxr.preprocess import PIPELINE_VERSION, check_config, preprocess

CACHE_FORMAT = 1  # bump when the files' layout or meaning changes
# Below this many files, decode in this process: starting workers costs ~1-3 s (each imports
# numpy, OpenCV, pandas and re-imports the caller's script), more than a 2-core pool saves on a
# few hundred 224 px images at ~10 ms each.
_POOL_MIN_IMAGES = 256
_SHOWN_SKIPPED = 3  # bad files named in the one-line summary


@dataclass
class CachedImages:
    """Preprocessed pixels, row i belonging to table row i.

    pixels: (N, S, S) uint8, a read-only np.memmap.
    table: the images that decoded (the input table less `skipped`).
    skipped: (key, reason) per bad file left out under skip_bad.
    path: the .npy file.
    """

    pixels: np.ndarray
    table: ImageTable
    skipped: list[tuple[str, str]]
    path: Path

    def __len__(self) -> int:
        return len(self.table)


def cache_key(table: ImageTable, cfg: PreprocessConfig) -> str:
    """sha256 of the config, the keys and the content: file size + mtime, or the array bytes."""
    digest = hashlib.sha256()
    digest.update(f"cxr-cache {CACHE_FORMAT} pipeline {PIPELINE_VERSION}\n".encode())
    digest.update(f"{config_hash(cfg, NORMALIZATION_FIELDS)}\n".encode())
    if table.arrays is not None:
        arrays = np.ascontiguousarray(table.arrays)
        digest.update(f"arrays {arrays.dtype.str} {arrays.shape}\n".encode())
        digest.update(memoryview(arrays).cast("B"))
        for key in table.keys:
            digest.update(f"{key}\n".encode())
    else:
        for key in table.keys:
            try:
                stat = os.stat(key)
                digest.update(f"{key}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:  # missing: the build reports it; the key must still be stable
                digest.update(f"{key}\0missing\n".encode())
    return digest.hexdigest()[:32]


def build_cache(
    table: ImageTable,
    cfg: PreprocessConfig,
    cache_dir: str | Path,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> CachedImages:
    """Open the cache for (table, cfg), building it first if it does not exist.

    A file that fails to decode raises DataError naming it, or with skip_bad is left out,
    listed in `skipped` and summarised on stderr. workers: processes for decoding files
    (default os.cpu_count(); 1 decodes in this process).
    """
    if not isinstance(table, ImageTable):
        raise ValueError(f"table must be an ImageTable, got {type(table).__name__}")
    if len(table) == 0:
        raise ValueError("table has no images to cache")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_config(cfg)

    cache_dir = Path(cache_dir)
    key = cache_key(table, cfg)
    path = cache_dir / f"{key}.npy"
    meta_path = cache_dir / f"{key}.json"
    cached = _open(path, meta_path, table, cfg)
    if cached is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _build(table, cfg, path, meta_path, skip_bad, workers, progress)
        cached = _open(path, meta_path, table, cfg)
        if cached is None:  # pragma: no cover - only if the files vanish under us
            raise DataError("cache was written but cannot be read back", path=str(path))
    if cached.skipped:
        if not skip_bad:
            bad, reason = cached.skipped[0]
            raise _named_error(bad, reason)
        _report_skipped(cached.skipped, len(table))
    return cached


def _open(
    path: Path, meta_path: Path, table: ImageTable, cfg: PreprocessConfig
) -> CachedImages | None:
    """The finished cache, or None when there is none (or it does not fit this table)."""
    if not path.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        skipped = [(str(k), str(r)) for k, r in meta["skipped"]]
        pixels = np.load(path, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    bad = {k for k, _ in skipped}
    keep = [i for i, k in enumerate(table.keys) if k not in bad]
    s = cfg.image_size
    if meta.get("n_images") != len(table) or pixels.shape != (len(keep), s, s):
        return None
    if pixels.dtype != np.uint8:
        return None
    kept = table if not skipped else table.subset(keep)
    return CachedImages(pixels=pixels, table=kept, skipped=skipped, path=path)


def _build(
    table: ImageTable,
    cfg: PreprocessConfig,
    path: Path,
    meta_path: Path,
    skip_bad: bool,
    workers: int,
    progress: bool,
) -> None:
    """Decode + preprocess into a temporary .npy, then rename it into place."""
    n, s = len(table), cfg.image_size
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp_meta = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, s, s))
        kept, skipped = 0, []
        bar = tqdm(total=n, desc="preprocessing", unit="img", disable=not progress)
        results = _preprocess_all(table, cfg, workers)
        try:
            for i, pixels, reason in results:
                bar.update(1)
                if pixels is None:
                    if not skip_bad:
                        raise _named_error(table.keys[i], reason)
                    skipped.append((table.keys[i], reason))
                    continue
                out[kept] = pixels
                kept += 1
        finally:
            results.close()  # on an error, stops the pool now rather than when garbage-collected
            bar.close()
        out.flush()
        del out
        if kept == 0:
            raise DataError(
                f"none of the {n} images could be decoded; the first: {skipped[0][1]}",
                path=skipped[0][0],
            )
        if skipped:
            _shrink(tmp, kept)
        meta = {
            "format": CACHE_FORMAT,
            "pipeline_version": PIPELINE_VERSION,
            "config": cfg.model_dump(exclude=set(NORMALIZATION_FIELDS)),
            "n_images": n,
            "n_cached": kept,
            "skipped": [list(item) for item in skipped],
            "source": table.source,
        }
        tmp_meta.write_text(json.dumps(meta, indent=2))
        # Metadata first: a .npy never exists without its .json, and the .npy's rename is the
        # single step that makes the cache count as finished.
        os.replace(tmp_meta, meta_path)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp_meta):
            leftover.unlink(missing_ok=True)


def _shrink(tmp: Path, rows: int) -> None:
    """Keep the first `rows` images of the .npy at tmp (bad files left gaps at the end)."""
    full = np.load(tmp, mmap_mode="r")
    small_path = tmp.with_name(tmp.name + ".small")
    try:
        small = np.lib.format.open_memmap(
            small_path, mode="w+", dtype=np.uint8, shape=(rows, *full.shape[1:])
        )
        small[:] = full[:rows]
        small.flush()
        del small, full
        os.replace(small_path, tmp)
    finally:
        small_path.unlink(missing_ok=True)


Result = tuple[int, "np.ndarray | None", str]


def _preprocess_all(table: ImageTable, cfg: PreprocessConfig, workers: int) -> Iterator[Result]:
    """(index, uint8 pixels or None, reason) per image, in table order."""
    n = len(table)
    done = 0
    # In-memory arrays (MedMNIST, 28-224 px) are cheap: no pool.
    if table.arrays is None and workers >= 2 and n >= _POOL_MIN_IMAGES:
        try:
            for result in _preprocess_in_pool(table, cfg, workers):
                yield result
                done += 1
        except BrokenProcessPool as exc:
            print(
                f"preprocessing workers failed ({exc}); continuing in this process from image "
                f"{done + 1} of {n}",
                file=sys.stderr,
            )
    for i in range(done, n):
        yield _preprocess_one(table, cfg, i)


def _preprocess_in_pool(table: ImageTable, cfg: PreprocessConfig, workers: int) -> Iterator[Result]:
    """The same results from a process pool; executor.map keeps table order.

    ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (out of memory, a decoder
    crash, a caller's script without an `if __name__ == "__main__":` guard) raises
    BrokenProcessPool, where Pool would wait forever. forkserver, not fork: forking a parent
    that has threads (torch, tqdm, an earlier pool's queue feeder) deadlocked a worker in our
    tests. The server imports this module once and each worker is a fork of that
    single-threaded server; Python still re-imports the caller's main script in each worker
    (preloading "__main__" only takes effect on newer Pythons), which is why this module
    imports no torch.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", __name__])
    else:
        context = multiprocessing.get_context("spawn")
    chunk = max(1, min(32, len(table) // (workers * 8)))
    executor = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(table, cfg)
    )
    try:
        yield from executor.map(_worker_preprocess, range(len(table)), chunksize=chunk)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _preprocess_one(table: ImageTable, cfg: PreprocessConfig, i: int) -> Result:
    try:
        image = table_module.load_image(table, i)
    except DataError as exc:
        return i, None, str(exc)
    return i, preprocess(image, cfg), ""


_worker_state: dict = {}


def _init_worker(table: ImageTable, cfg: PreprocessConfig) -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool already uses every core; nested threads only contend
    _worker_state["table"], _worker_state["cfg"] = table, cfg


def _worker_preprocess(i: int) -> Result:
    return _preprocess_one(_worker_state["table"], _worker_state["cfg"], i)


def _named_error(key: str, reason: str) -> DataError:
    """DataError naming the file once (decode errors usually start with it already)."""
    prefix = f"{key}: "
    message = reason[len(prefix) :] if reason.startswith(prefix) else reason
    hint = " (set data.skip_bad to leave bad files out and carry on)"
    return DataError((message or "cannot decode image") + hint, path=key)


def _report_skipped(skipped: list[tuple[str, str]], n: int) -> None:
    shown = ", ".join(k for k, _ in skipped[:_SHOWN_SKIPPED])
    more = ", ..." if len(skipped) > _SHOWN_SKIPPED else ""
    print(f"skipped {len(skipped)} of {n} images: {shown}{more}", file=sys.stderr)
