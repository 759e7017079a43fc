"""Read a CheXpert-style CSV: Path, Sex, Age, Frontal/Lateral, AP/PA, then finding columns.

Finding values are 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned in the
report, taken as negative). What -1 becomes is the `uncertain` policy of Irvin et al. (2019):
"ignore" masks it out of the loss (NaN), "ones" / "zeros" map it to a label.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.table import ImageTable
from cxr.errors import DataError

METADATA_COLUMNS = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Patient", "Patient ID"}
UNCERTAIN_POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": 0.0, "-1": -1.0, "-1.0": -1.0}
_SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
_PATIENT = re.compile(r"(patient\d+)", re.IGNORECASE)


def read_chexpert(
    csv_path: str | Path, uncertain: str = "ignore", skip_bad: bool = False
) -> ImageTable:
    """Multilabel table; image paths resolve against the CSV's folder, then its parent.

    skip_bad: rows whose image is missing go to `table.skipped` instead of raising.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(
            f"uncertain must be one of {sorted(UNCERTAIN_POLICIES)}, got {uncertain!r}"
        )
    csv_path = Path(csv_path).absolute()
    frame = _read_csv(csv_path)
    findings = [c for c in frame.columns if c not in METADATA_COLUMNS and not _unnamed(c)]
    if not findings:
        raise DataError("no finding columns after the metadata columns", path=str(csv_path))
    labels = _parse_labels(frame, findings, csv_path, UNCERTAIN_POLICIES[uncertain])

    keys: list[str] = []
    rows: list[int] = []
    skipped: list[str] = []
    for row, value in enumerate(frame["Path"], start=1):
        path = _resolve(value, csv_path)
        if path is None:
            reason = f"image '{value}' not found beside the CSV or in its parent folder"
            if not value:
                reason = "empty 'Path'"
            if not skip_bad:
                raise DataError(reason, path=str(csv_path), row=row)
            skipped.append(f"{value} ({csv_path}, row {row}: not found)")
            continue
        keys.append(str(path))
        rows.append(row)
    if not keys:
        raise DataError(f"none of the {len(frame)} images listed were found", path=str(csv_path))

    index = np.asarray(rows) - 1
    kept = frame.iloc[index]
    split = _SPLITS.get(csv_path.name.split(".")[0].lower())
    return ImageTable(
        keys=keys,
        labels=labels[index],
        findings=findings,
        task="multilabel",
        patient_ids=_patient_ids(kept, keys),
        official_split=None if split is None else [split] * len(keys),
        meta=_meta(kept),
        source=str(csv_path),
        skipped=skipped,
    )


def _unnamed(column: str) -> bool:
    """pandas names an index column written without a header 'Unnamed: 0'; not a finding."""
    return column.startswith("Unnamed:")


def _read_csv(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError("CheXpert CSV not found", path=str(csv_path))
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the CSV: {exc}", path=str(csv_path)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if "Path" not in frame.columns:
        raise DataError(
            f"required column 'Path' missing (columns found: {list(frame.columns)})",
            path=str(csv_path),
        )
    return frame.apply(lambda column: column.str.strip())


def _parse_labels(
    frame: pd.DataFrame, findings: list[str], csv_path: Path, uncertain_value: float
) -> np.ndarray:
    labels = np.zeros((len(frame), len(findings)), dtype=np.float32)
    for j, column in enumerate(findings):
        values = frame[column].map(_VALUES)
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise DataError(
                f"column '{column}' has '{frame[column].iloc[row - 1]}' (data row {row}, line "
                f"{row + 1} of the file); expected 1, 0, -1 (uncertain) or blank",
                path=str(csv_path),
                row=row,
            )
        labels[:, j] = values.to_numpy(dtype=np.float32)
    labels[labels == -1.0] = uncertain_value
    return labels


def _resolve(value: str, csv_path: Path) -> Path | None:
    """CheXpert paths start with the dataset folder's name, so they resolve from the CSV's parent.

    Checking the CSV's own folder first also serves CSVs written next to their images.
    """
    if not value:
        return None
    path = Path(value)
    candidates = (
        [path] if path.is_absolute() else [csv_path.parent / path, csv_path.parent.parent / path]
    )
    return next((c for c in candidates if c.is_file()), None)


def _patient_ids(kept: pd.DataFrame, keys: list[str]) -> list[str]:
    column = next((c for c in ("Patient", "Patient ID") if c in kept.columns), None)
    fallback = list(kept[column]) if column else [Path(k).stem for k in keys]
    ids = []
    for value, key, other in zip(kept["Path"], keys, fallback, strict=True):
        match = _PATIENT.search(value)
        ids.append(match.group(1) if match else (other or Path(key).stem))
    return ids


def _meta(kept: pd.DataFrame) -> dict[str, list]:
    meta: dict[str, list] = {}
    if "Sex" in kept.columns:
        meta["sex"] = list(kept["Sex"])
    if "Age" in kept.columns:
        meta["age"] = [_parse_age(a) for a in kept["Age"]]
    if "AP/PA" in kept.columns:
        meta["view"] = list(kept["AP/PA"])
    if "Frontal/Lateral" in kept.columns:
        meta["frontal_lateral"] = list(kept["Frontal/Lateral"])
    return meta


def _parse_age(text: str) -> int | None:
    """Whole years, or None where blank or not a number (age is metadata, not a label)."""
    try:
        age = float(text)
    except ValueError:
        return None
    return int(age) if math.isfinite(age) else None
