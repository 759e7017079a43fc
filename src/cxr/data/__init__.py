"""Readers for every supported source, each returning the same `ImageTable`.

`read_table` is the one door: it picks the reader from `DataConfig.format`, or from what is on
disk when the format is "auto". Limits (`cfg.limit`) are the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cxr.config import DataConfig
from cxr.data.chexpert import read_chexpert
from cxr.data.folder import read_folder
from cxr.data.image_io import DecodeOptions, decode_bytes, decode_image, read_image
from cxr.data.medmnist import is_medmnist_flag, read_medmnist
from cxr.data.nih import CSV_NAMES, read_nih
from cxr.data.table import ImageTable, load_image
from cxr.errors import DataError

__all__ = [
    "DecodeOptions",
    "ImageTable",
    "decode_bytes",
    "decode_image",
    "detect_format",
    "load_image",
    "read_image",
    "read_table",
]


def read_table(cfg: DataConfig) -> ImageTable:
    """The table for cfg.path, read by the reader cfg.format names (or that detection picks)."""
    fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
    return _READERS[fmt](cfg)


def detect_format(path: str | Path) -> str:
    """'nih', 'chexpert', 'medmnist' or 'folder' from what `path` is; DataError if none fits."""
    target = Path(path).expanduser()
    if target.is_dir():
        if any((target / name).is_file() for name in CSV_NAMES):
            return "nih"
        return "folder"  # class folders or split folders; read_folder says what is missing
    if target.is_file():
        name = target.name.lower()
        if name.endswith(".npz"):
            return "medmnist"
        if name.endswith((".csv", ".csv.gz")):
            return _csv_format(target)
        raise DataError(
            "cannot tell the data format: expected a folder, a .csv/.csv.gz label file or a "
            "MedMNIST .npz",
            path=str(path),
        )
    if is_medmnist_flag(str(path)):
        return "medmnist"
    raise DataError("data path not found (and not a MedMNIST flag)", path=str(path))


def _csv_format(csv_path: Path) -> str:
    """NIH tables have 'Image Index'; CheXpert CSVs have 'Path'."""
    try:
        columns = {str(c).strip() for c in pd.read_csv(csv_path, nrows=0).columns}
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the CSV header: {exc}", path=str(csv_path)) from exc
    if "Image Index" in columns:
        return "nih"
    if "Path" in columns:
        return "chexpert"
    raise DataError(
        "unknown CSV layout: expected an 'Image Index' column (NIH ChestX-ray14) or a 'Path' "
        f"column (CheXpert); found {sorted(columns)}",
        path=str(csv_path),
    )


def _read_medmnist(cfg: DataConfig) -> ImageTable:
    """A folder path means: the MedMNIST download folder, holding cfg.medmnist_flag."""
    if Path(cfg.path).expanduser().is_dir():
        return read_medmnist(cfg.medmnist_flag, root=cfg.path)
    return read_medmnist(cfg.path)


def _read_synthetic(cfg: DataConfig) -> ImageTable:
    from cxr.data.synthetic import read_synthetic  # written elsewhere; only needed here

    return read_synthetic(cfg.path)


_READERS: dict[str, Callable[[DataConfig], ImageTable]] = {
    "folder": lambda cfg: read_folder(cfg.path, skip_bad=cfg.skip_bad),
    "nih": lambda cfg: read_nih(cfg.path, skip_bad=cfg.skip_bad),
    "chexpert": lambda cfg: read_chexpert(cfg.path, uncertain=cfg.uncertain, skip_bad=cfg.skip_bad),
    "medmnist": _read_medmnist,
    "synthetic": _read_synthetic,
}
