"""Patient-level splits: no patient on two sides, seeded, stratified, written to a file.

Images of one patient are correlated (same anatomy, same scanner, follow-ups), so an image-level
split leaks and inflates validation AUROC. We split patients, stratifying on each patient's
label signature so that rare findings land on both sides where there are enough of them.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxr.data.table import ImageTable
from cxr.errors import DataError

SPLITS = ("train", "val", "test")


def patient_level_split(
    table: ImageTable, val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> list[str]:
    """Assign "train" / "val" / "test" to every image; the official split is kept as is.

    Images the dataset marks as official test stay test; val (and test, when the data has no
    official test split and test_fraction > 0) are carved from the rest by patient.
    """
    n = len(table)
    assignment = ["train"] * n
    official = table.official_split or [None] * n
    has_official_test = any(s == "test" for s in official)
    has_official_val = any(s == "val" for s in official)
    free = []
    for i, s in enumerate(official):
        if s == "test":
            assignment[i] = "test"
        elif s == "val" and has_official_val:
            assignment[i] = "val"
        else:
            free.append(i)
    fractions = {}
    if not has_official_val:
        fractions["val"] = val_fraction
    if not has_official_test and test_fraction > 0:
        fractions["test"] = test_fraction
    if not fractions or not free:
        return assignment

    # A patient the dataset already put in its official test split stays out of our validation
    # split, so that our carving never adds a leak of its own (their train images stay train).
    fixed = {table.patient_ids[i] for i, s in enumerate(official) if s in ("test", "val")}
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i in free:
        if table.patient_ids[i] not in fixed:
            by_patient[table.patient_ids[i]].append(i)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, idx in by_patient.items():
        strata[_stratum(table, idx)].append(patient)

    rng = np.random.default_rng(seed)
    for key in sorted(strata):
        patients = sorted(strata[key])
        rng.shuffle(patients)
        # Cumulative rounding per stratum keeps each stratum's share close to the target.
        start = 0
        for name, frac in fractions.items():
            count = int(round(frac * len(patients)))
            for patient in patients[start : start + count]:
                for i in by_patient[patient]:
                    assignment[i] = name
            start += count
    return assignment


def _stratum(table: ImageTable, idx: list[int]) -> str:
    """A patient's label signature: its class (multiclass) or its rarest positive finding."""
    labels = np.nan_to_num(table.labels[idx], nan=0.0).max(axis=0)
    if table.task == "multiclass":
        return table.findings[int(labels.argmax())]
    positives = np.flatnonzero(labels > 0.5)
    if positives.size == 0:
        return "none"
    prevalence = np.nan_to_num(table.labels, nan=0.0).mean(axis=0)
    return table.findings[int(positives[np.argmin(prevalence[positives])])]


def write_split_file(path: str | Path, table: ImageTable, assignment: list[str]) -> None:
    """CSV of key, patient_id, split: enough to rebuild exactly this split later."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "patient_id", "split"])
        for key, patient, split in zip(table.keys, table.patient_ids, assignment, strict=True):
            writer.writerow([key, patient, split])


def read_split_file(path: str | Path, table: ImageTable) -> list[str]:
    """Assignment for `table` from a split file; every image must be listed, with a known split."""
    path = Path(path)
    if not path.is_file():
        raise DataError("split file not found", path=str(path))
    known: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"key", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"missing column(s) {sorted(missing)}", path=str(path))
        for row_number, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise DataError(
                    f"unknown split {row['split']!r} (expected one of {SPLITS})",
                    path=str(path),
                    row=row_number,
                )
            known[row["key"]] = row["split"]
    absent = [k for k in table.keys if k not in known]
    if absent:
        raise DataError(
            f"{len(absent)} image(s) are not in the split file, e.g. {absent[0]}", path=str(path)
        )
    return [known[k] for k in table.keys]


def keys_in_split(path: str | Path, split: str) -> set[str]:
    """The image keys a split file puts in `split` (to evaluate a run on its own test split)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("split file not found", path=str(path))
    with open(path, newline="") as fh:
        return {row["key"] for row in csv.DictReader(fh) if row.get("split") == split}


def check_patient_disjoint(table: ImageTable, assignment: list[str]) -> None:
    """Raise if a patient appears in two splits (a leak that inflates every metric).

    Where both sides were fixed by the dataset's official split (Kermany numbers patients across
    its train and test folders), we keep the official split as published and only warn.
    """
    official = table.official_split or [None] * len(table)
    seen: dict[str, tuple[str, bool]] = {}
    official_overlap: set[str] = set()
    for patient, split, off in zip(table.patient_ids, assignment, official, strict=True):
        first_split, first_official = seen.setdefault(patient, (split, off == split))
        if first_split == split:
            continue
        if first_official and off == split:
            official_overlap.add(patient)
            continue
        raise DataError(f"patient {patient} is in both {first_split} and {split}")
    if official_overlap:
        print(
            f"warning: {len(official_overlap)} patient(s) appear in two of the dataset's official "
            f"splits (e.g. {sorted(official_overlap)[0]}); kept as published"
        )
