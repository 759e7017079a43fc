"""Read NIH ChestX-ray14: `Data_Entry_2017.csv` (or the gzipped full table) plus its PNG folders.

Labels are text-mined from reports (about 90% accurate per the release), `|`-separated, with
`No Finding` meaning all 14 negative. The official release ships images in `images_001/images/`
... `images_012/images/`; a flat `images/` folder works too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.image_io import IMAGE_EXTENSIONS
from cxr.data.table import ImageTable
from cxr.errors import DataError

NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NO_FINDING = "No Finding"
CSV_NAMES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
_META_COLUMNS = {"sex": "Patient Gender", "age": "Patient Age", "view": "View Position"}


def read_nih(
    root: str | Path, skip_bad: bool = False, images: str | Path | None = None
) -> ImageTable:
    """Multilabel table over the 14 findings, in the official order.

    root: the dataset folder, or the label CSV itself (`.csv` or `.csv.gz`).
    images: where the PNGs are, when not beside the CSV (e.g. the full label table kept apart).
    skip_bad: rows whose image is missing go to `table.skipped` instead of raising.
    """
    csv_path = find_nih_csv(root)
    folder = csv_path.parent
    frame = _read_csv(csv_path)
    labels = _parse_all_labels(frame, csv_path)  # every row, so a typo fails even if skipped
    image_index = _index_images(Path(images) if images is not None else folder)

    keys: list[str] = []
    rows: list[int] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    for row, name in enumerate(frame["Image Index"], start=1):
        if name in seen:
            raise DataError(
                f"image '{name}' listed twice (also at row {seen[name]})",
                path=str(csv_path),
                row=row,
            )
        seen[name] = row
        path = image_index.get(name)
        if path is None:
            reason = f"image '{name}' not found under {images or folder}"
            if not skip_bad:
                raise DataError(reason, path=str(csv_path), row=row)
            skipped.append(f"{name} ({csv_path}, row {row}: not found)")
            continue
        keys.append(path)
        rows.append(row)
    if not keys:
        raise DataError(
            f"none of the {len(frame)} images listed were found under {images or folder}",
            path=str(csv_path),
        )

    index = np.asarray(rows) - 1
    kept = frame.iloc[index]
    names = list(kept["Image Index"])
    return ImageTable(
        keys=keys,
        labels=labels[index],
        findings=list(NIH_FINDINGS),
        task="multilabel",
        patient_ids=[str(p).strip() for p in kept["Patient ID"]],
        official_split=_official_split(folder, names),
        meta=_meta(kept, rows, csv_path),
        source=str(csv_path),
        skipped=skipped,
    )


def find_nih_csv(root: str | Path) -> Path:
    """The label CSV: `root` itself if it is a file, else the first known name inside it."""
    root = Path(root).absolute()
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(
            "NIH data not found (expected a folder or a Data_Entry CSV)", path=str(root)
        )
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no NIH label file in the folder (looked for {', '.join(CSV_NAMES)})", path=str(root)
    )


def _read_csv(csv_path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the label CSV: {exc}", path=str(csv_path)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise DataError(
                f"required column '{column}' missing (columns found: {list(frame.columns)})",
                path=str(csv_path),
            )
    frame["Image Index"] = frame["Image Index"].str.strip()
    return frame


def _index_images(folder: Path) -> dict[str, str]:
    """File name -> path over `images/`, `images_*/images/`, `images_*/` and the folder itself.

    One directory listing per folder instead of a stat per row: the full table has 112,120 rows.
    """
    candidates = [folder / "images", *sorted(folder.glob("images_*/images"))]
    candidates += [*sorted(folder.glob("images_*")), folder]
    index: dict[str, str] = {}
    for directory in candidates:
        if not directory.is_dir():
            continue
        with os.scandir(directory) as entries:
            for entry in entries:
                suffix = os.path.splitext(entry.name)[1].lower()
                if suffix in IMAGE_EXTENSIONS and entry.is_file() and entry.name not in index:
                    index[entry.name] = os.path.join(directory, entry.name)
    return index


def _parse_all_labels(frame: pd.DataFrame, csv_path: Path) -> np.ndarray:
    out = np.zeros((len(frame), len(NIH_FINDINGS)), dtype=np.float32)
    for row, text in enumerate(frame["Finding Labels"], start=1):
        out[row - 1] = _parse_labels(text, csv_path, row)
    return out


def _parse_labels(text: str, csv_path: Path, row: int) -> np.ndarray:
    parts = [p.strip() for p in str(text).split("|")]
    out = np.zeros(len(NIH_FINDINGS), dtype=np.float32)
    where = f"(data row {row}, line {row + 1} of the file counting the header)"
    if parts == [NO_FINDING]:
        return out
    for part in parts:
        if part == NO_FINDING:
            raise DataError(
                f"'No Finding' together with findings: '{text}' {where}", str(csv_path), row
            )
        if part not in NIH_FINDINGS:
            raise DataError(
                f"unknown finding '{part}' in 'Finding Labels' {where}; expected "
                f"'{NO_FINDING}' or '|'-separated names from {NIH_FINDINGS}",
                path=str(csv_path),
                row=row,
            )
        out[NIH_FINDINGS.index(part)] = 1.0
    return out


def _meta(kept: pd.DataFrame, rows: list[int], csv_path: Path) -> dict[str, list]:
    meta: dict[str, list] = {}
    for key, column in _META_COLUMNS.items():
        if column not in kept.columns:
            continue
        values = [str(v).strip() for v in kept[column]]
        if key == "age":
            meta[key] = [_parse_age(v, csv_path, r) for v, r in zip(values, rows, strict=True)]
        else:
            meta[key] = values
    return meta


def _parse_age(value: str, csv_path: Path, row: int) -> int | None:
    """Ages are whole years; early releases wrote them as '058Y'."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+)\s*Y?", value)
    if match is None:
        raise DataError(f"'Patient Age' is '{value}', expected whole years", str(csv_path), row)
    return int(match.group(1))


def _official_split(folder: Path, names: list[str]) -> list[str] | None:
    """train/test from the release's `train_val_list.txt` / `test_list.txt`, when present."""
    train_file, test_file = folder / "train_val_list.txt", folder / "test_list.txt"
    if not train_file.is_file() and not test_file.is_file():
        return None
    if not (train_file.is_file() and test_file.is_file()):
        missing = test_file if train_file.is_file() else train_file
        raise DataError(f"{missing.name} is missing beside its partner list", path=str(folder))
    train = set(train_file.read_text().split())
    test = set(test_file.read_text().split())
    split = []
    for name in names:
        if (name in train) == (name in test):
            where = "both" if name in train else "neither"
            raise DataError(
                f"image '{name}' is in {where} of train_val_list.txt and test_list.txt",
                path=str(folder),
            )
        split.append("train" if name in train else "test")
    return split
