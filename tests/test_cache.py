"""The preprocessed-image cache: built once, reopened without decoding, atomic, never silent."""

from __future__ import annotations

import os
import shutil
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.config import PreprocessConfig
from cxr.data import cache as cache_module
from cxr.data import table as table_module
from cxr.data.cache import build_cache, cache_key
from cxr.data.image_io import decode_image
from cxr.data.table import ImageTable
from cxr.errors import DataError
from cxr.preprocess import model_input, preprocess

CFG = PreprocessConfig(image_size=64)


def _table(keys: list[str], arrays: np.ndarray | None = None) -> ImageTable:
    n = len(keys)
    return ImageTable(
        keys=list(keys),
        labels=np.arange(n, dtype=np.float32)[:, None],
        findings=["finding"],
        task="multilabel",
        patient_ids=[f"p{i}" for i in range(n)],
        arrays=arrays,
    )


@pytest.fixture(scope="module")
def real_files(nih_samples: Path, kermany_train: Path) -> list[str]:
    """Real X-rays of two formats and sizes: NIH PNG (256, 512 px) and Kermany JPEG (224 px)."""
    nih = sorted((nih_samples / "images").glob("*.png"))[:10]
    kermany = sorted((kermany_train / "NORMAL").glob("*.jpeg"))[:10]
    return [str(p) for p in nih + kermany]


def _copy(files: list[str], folder: Path) -> list[str]:
    folder.mkdir()
    return [str(shutil.copy(src, folder / Path(src).name)) for src in files]


@pytest.fixture
def copied_files(tmp_path: Path, real_files: list[str]) -> list[str]:
    """Six real files copied to tmp_path, so a test may corrupt or touch them."""
    return _copy(real_files[:3] + real_files[-3:], tmp_path / "images")


class _Counter:
    """Wraps a function and counts its calls (in this process)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_second_build_decodes_nothing_and_recomputes_nothing(tmp_path, copied_files, monkeypatch):
    loads = _Counter(table_module.load_image)
    preprocesses = _Counter(cache_module.preprocess)
    monkeypatch.setattr(table_module, "load_image", loads)
    monkeypatch.setattr(cache_module, "preprocess", preprocesses)
    table = _table(copied_files)

    first = build_cache(table, CFG, tmp_path / "cache", workers=1, progress=False)
    assert loads.calls == len(table) and preprocesses.calls == len(table)
    mtime = first.path.stat().st_mtime_ns

    second = build_cache(table, CFG, tmp_path / "cache", progress=False)  # default workers
    assert loads.calls == len(table) and preprocesses.calls == len(table)  # no new calls
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert np.array_equal(second.pixels, first.pixels)
    assert second.table.keys == table.keys and second.skipped == []


def test_cache_is_a_read_only_uint8_memory_map_with_metadata(tmp_path, copied_files):
    table = _table(copied_files)
    cached = build_cache(table, CFG, tmp_path, workers=1, progress=False)
    assert isinstance(cached.pixels, np.memmap) and not cached.pixels.flags.writeable
    assert cached.pixels.shape == (len(table), 64, 64) and cached.pixels.dtype == np.uint8
    assert cached.path == tmp_path / f"{cache_key(table, CFG)}.npy" and len(cached) == len(table)
    meta = cached.path.with_suffix(".json").read_text()
    assert '"n_images": 6' in meta and '"image_size": 64' in meta and '"skipped": []' in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [cached.path.name, cached.path.with_suffix(".json").name, "images"]
    )


@pytest.fixture
def small_pool(monkeypatch):
    """Use the worker pool even for the few files a test decodes."""
    monkeypatch.setattr(cache_module, "_POOL_MIN_IMAGES", 8)


def test_training_and_serving_preprocess_byte_identically(tmp_path, real_files, small_pool):
    """The same file through build_cache (training, worker pool) and decode + preprocess
    (serving)."""
    cfg = PreprocessConfig(image_size=224, filter="unsharp")
    cached = build_cache(_table(real_files), cfg, tmp_path, workers=2, progress=False)
    for i, path in enumerate(real_files):
        served = preprocess(decode_image(path), cfg)
        assert served.tobytes() == cached.pixels[i].tobytes(), path
        batch = torch.from_numpy(np.array(cached.pixels[i : i + 1]))
        assert torch.equal(model_input(batch), model_input(torch.from_numpy(served)[None]))


def test_parallel_and_serial_builds_agree(tmp_path, real_files, small_pool, monkeypatch, capsys):
    table = _table(real_files)
    serial = build_cache(table, CFG, tmp_path / "serial", workers=1, progress=False)
    in_parent = _Counter(cache_module._preprocess_one)
    monkeypatch.setattr(cache_module, "_preprocess_one", in_parent)
    parallel = build_cache(table, CFG, tmp_path / "parallel", workers=2, progress=False)
    assert in_parent.calls == 0  # the workers did the decoding
    assert "failed" not in capsys.readouterr().err
    assert np.array_equal(serial.pixels, parallel.pixels)


def test_a_broken_pool_falls_back_to_this_process_without_losing_images(
    copied_files, small_pool, monkeypatch, capsys
):
    table = _table(copied_files)

    def dies_after_two(table, cfg, workers):
        for i in range(2):
            yield cache_module._preprocess_one(table, cfg, i)
        raise BrokenProcessPool("a worker was killed")

    monkeypatch.setattr(cache_module, "_POOL_MIN_IMAGES", 2)
    monkeypatch.setattr(cache_module, "_preprocess_in_pool", dies_after_two)
    results = list(cache_module._preprocess_all(table, CFG, workers=2))
    assert [i for i, _, _ in results] == list(range(len(table)))
    assert "continuing in this process from image 3 of 6" in capsys.readouterr().err


def test_key_changes_with_config_files_and_arrays(copied_files):
    table = _table(copied_files)
    key = cache_key(table, CFG)
    assert cache_key(table, CFG) == key
    assert cache_key(table, PreprocessConfig(image_size=64, clahe_clip_limit=3.0)) != key
    assert cache_key(table, PreprocessConfig(image_size=96)) != key
    assert cache_key(table.subset([0, 1, 2]), CFG) != key
    stat = os.stat(copied_files[0])
    os.utime(copied_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache_key(table, CFG) != key  # a file edited in place is a different input

    arrays = np.zeros((2, 28, 28), np.uint8)
    in_memory = _table(["a.npz#0", "a.npz#1"], arrays)
    before = cache_key(in_memory, CFG)
    arrays[1, 5, 5] = 1
    assert cache_key(_table(["a.npz#0", "a.npz#1"], arrays), CFG) != before


def test_in_memory_arrays_are_cached(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    table = _table([f"mnist.npz#train/{i}" for i in range(5)], arrays)
    cached = build_cache(table, CFG, tmp_path, progress=False)
    expected = preprocess(arrays[3].astype(np.float32) / 255, CFG)
    assert np.array_equal(cached.pixels[3], expected)


@pytest.fixture
def with_corrupt_file(copied_files: list[str]) -> tuple[list[str], str]:
    """copied_files with the third one cut short (a truncated download)."""
    bad = copied_files[2]
    data = Path(bad).read_bytes()
    Path(bad).write_bytes(data[: len(data) // 3])
    return copied_files, bad


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_file_raises_naming_it_and_leaves_no_cache(
    tmp_path, real_files, small_pool, workers
):
    files = _copy(real_files, tmp_path / "images")  # 20 files: enough for a worker pool
    bad = files[12]
    Path(bad).write_bytes(Path(bad).read_bytes()[:500])  # a truncated download
    with pytest.raises(DataError, match=bad) as info:
        build_cache(_table(files), CFG, tmp_path / "cache", workers=workers, progress=False)
    assert info.value.path == bad and "skip_bad" in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written left behind


def test_skip_bad_lists_the_file_and_shrinks_the_table(tmp_path, with_corrupt_file, capsys):
    files, bad = with_corrupt_file
    table = _table(files)
    cached = build_cache(table, CFG, tmp_path, skip_bad=True, workers=1, progress=False)
    assert [k for k, _ in cached.skipped] == [bad] and cached.skipped[0][1]
    assert cached.table.keys == [k for k in files if k != bad]
    assert cached.pixels.shape == (len(files) - 1, 64, 64)
    assert cached.table.labels[:, 0].tolist() == [0, 1, 3, 4, 5]  # rows stay with their labels
    assert np.array_equal(cached.pixels[2], preprocess(decode_image(files[3]), CFG))
    assert f"skipped 1 of 6 images: {bad}" in capsys.readouterr().err

    # Reopened from disk: still reported, still left out, still decoded by no one.
    again = build_cache(table, CFG, tmp_path, skip_bad=True, progress=False)
    assert again.skipped == cached.skipped and again.table.keys == cached.table.keys
    assert "skipped 1 of 6 images" in capsys.readouterr().err
    # ...and without skip_bad the cached result is an error naming the file, as a fresh build.
    with pytest.raises(DataError, match=bad):
        build_cache(table, CFG, tmp_path, progress=False)


def test_a_table_of_only_bad_files_is_an_error_even_with_skip_bad(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(DataError, match="none of the 1 images"):
        build_cache(_table([str(bad)]), CFG, tmp_path / "cache", skip_bad=True, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_build_that_fails_midway_leaves_no_final_file(tmp_path, copied_files, monkeypatch):
    real = cache_module.preprocess
    calls = _Counter(real)

    def failing(image, cfg):
        if calls.calls == 3:
            raise RuntimeError("killed midway")
        return calls(image, cfg)

    monkeypatch.setattr(cache_module, "preprocess", failing)
    table = _table(copied_files)
    with pytest.raises(RuntimeError, match="killed midway"):
        build_cache(table, CFG, tmp_path, workers=1, progress=False)
    assert list(tmp_path.glob("*.npy")) == [] and list(tmp_path.glob("*.tmp")) == []

    monkeypatch.setattr(cache_module, "preprocess", real)
    cached = build_cache(table, CFG, tmp_path, workers=1, progress=False)
    assert cached.pixels.shape[0] == len(table)


def test_a_leftover_metadata_file_without_pixels_is_rebuilt(tmp_path, copied_files):
    table = _table(copied_files)
    key = cache_key(table, CFG)
    (tmp_path / f"{key}.json").write_text('{"n_images": 6, "skipped": []}')
    cached = build_cache(table, CFG, tmp_path, workers=1, progress=False)
    assert cached.pixels.shape == (6, 64, 64)


def test_bad_arguments_are_named(tmp_path, copied_files):
    with pytest.raises(ValueError, match="table"):
        build_cache(_table([]), CFG, tmp_path)
    with pytest.raises(ValueError, match="workers"):
        build_cache(_table(copied_files), CFG, tmp_path, workers=0)
