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


# An official validation split is used as is only when asked, or when it is big enough to choose
# thresholds, a temperature and an early-stopping epoch on (Kermany's official val/ holds 16).
OFFICIAL_VAL_MIN_IMAGES = 200
OFFICIAL_VAL_MIN_SHARE = 0.05  # of the official train images


def choose_val_source(table: ImageTable, val_source: str = "auto") -> str:
    """Where validation comes from: "official" (the dataset's own val split) or "fraction".

    "auto" takes the official one only when it holds >= OFFICIAL_VAL_MIN_IMAGES images and
    >= OFFICIAL_VAL_MIN_SHARE of the official train images; otherwise its images join the pool.
    """
    if val_source not in ("auto", "fraction", "official"):
        raise DataError(f"data.val_source must be auto, fraction or official, got {val_source!r}")
    official = table.official_split or []
    n_val, n_train = official.count("val"), official.count("train")
    if val_source == "official":
        if not n_val:
            raise DataError(
                "data.val_source is 'official' but the data has no official validation split",
                path=table.source or None,
            )
        return "official"
    if val_source == "auto" and n_val >= max(
        OFFICIAL_VAL_MIN_IMAGES, OFFICIAL_VAL_MIN_SHARE * n_train
    ):
        return "official"
    return "fraction"


def describe_val_source(table: ImageTable, val_source: str, val_fraction: float) -> str:
    """One line for the screen and the run folder: where the validation images came from."""
    n_official = (table.official_split or []).count("val")
    if val_source == "official":
        return f"the dataset's official validation split ({n_official} images)"
    left = f"; the official val split's {n_official} image(s) joined the pool" if n_official else ""
    return f"a patient-level split of the training images, val_fraction {val_fraction}{left}"


def patient_level_split(
    table: ImageTable,
    val_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
    val_source: str = "auto",
) -> list[str]:
    """Assign "train" / "val" / "test" to every image; the official test split is kept as is.

    Images the dataset marks as official test stay test. Validation is the official val split
    only when `choose_val_source` says so; otherwise it (and test, when the data has no official
    test split and test_fraction > 0) is carved from the other images by patient, with
    iterative multi-label stratification. The official test images' labels never enter: the
    split of the other images depends on them only through which patients they hold.
    """
    n = len(table)
    assignment = ["train"] * n
    official = table.official_split or [None] * n
    has_official_test = any(s == "test" for s in official)
    use_official_val = choose_val_source(table, val_source) == "official"
    free = []
    for i, s in enumerate(official):
        if s == "test":
            assignment[i] = "test"
        elif s == "val" and use_official_val:
            assignment[i] = "val"
        else:
            free.append(i)
    fractions = {}
    if not use_official_val:
        fractions["val"] = val_fraction
    if not has_official_test and test_fraction > 0:
        fractions["test"] = test_fraction
    if not fractions or not free:
        return assignment

    # A patient the dataset already put in its official test (or used val) split stays out of
    # our carved splits, so that our carving never adds a leak of its own (their train images
    # stay train).
    fixed = {table.patient_ids[i] for i in range(n) if assignment[i] != "train"}
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i in free:
        if table.patient_ids[i] not in fixed:
            by_patient[table.patient_ids[i]].append(i)
    patients = sorted(by_patient)
    counts = np.stack([_positive_images(table, by_patient[p]) for p in patients])
    sizes = np.array([len(by_patient[p]) for p in patients])
    names = _iterative_stratification(counts, sizes, fractions, np.random.default_rng(seed))
    for patient, name in zip(patients, names, strict=True):
        for i in by_patient[patient]:
            assignment[i] = name
    return assignment


def _positive_images(table: ImageTable, idx: list[int]) -> np.ndarray:
    """(K,) int: the patient's images positive for each finding (or of each class)."""
    return (np.nan_to_num(table.labels[idx], nan=0.0) > 0.5).sum(axis=0)


def _iterative_stratification(
    counts: np.ndarray, sizes: np.ndarray, fractions: dict[str, float], rng: np.random.Generator
) -> list[str]:
    """Split patients into "train" and `fractions`, balancing every finding's images at once.

    counts: (P, K) positive images per patient and finding; sizes: (P,) images per patient.
    Iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML 2011) on patients: take the
    finding with the fewest unassigned positive patients, give each of them to the subset that
    still wants the most of that finding's images (then the most images), repeat; patients
    with no positive fill the remaining shares. Before that, a finding with enough patients
    gives one (its patient with the fewest positive images) to each carved subset that has
    none yet, keeping at least one for train: a rare finding (NIH Hernia, 2 patients in
    NIH-1000) is never missing from validation.
    """
    n_patients, n_labels = counts.shape
    names = ["train", *fractions]
    share = np.array([1.0 - sum(fractions.values()), *fractions.values()])
    want = share[:, None] * counts.sum(axis=0)[None, :]  # positive images per subset
    want_images = share * sizes.sum()
    has = np.zeros((len(names), n_labels), dtype=bool)
    out = np.full(n_patients, -1)

    def assign(patient: int, subset: int) -> None:
        out[patient] = subset
        want[subset] -= counts[patient]
        want_images[subset] -= sizes[patient]
        has[subset] |= counts[patient] > 0

    tie_break = rng.permutation(n_patients)  # seeded order among equal patients
    while True:
        free = out < 0
        positive = (counts > 0) & free[:, None]
        n_free = positive.sum(axis=0)
        if not n_free.any():
            break
        label = int(np.argmin(np.where(n_free > 0, n_free, n_patients + 1)))
        rows = np.flatnonzero(positive[:, label])
        rows = rows[np.lexsort((tie_break[rows], counts[rows, label]))]  # fewest images first
        for k, patient in enumerate(rows):
            left = len(rows) - k - 1  # this finding's patients still to place after this one
            lacking = [s for s in range(1, len(names)) if not has[s, label]]
            train_needs = 0 if has[0, label] else 1
            if lacking and left >= train_needs + len(lacking) - 1:
                assign(patient, lacking[0])
                continue
            if train_needs and left == 0:
                assign(patient, 0)
                continue
            best = np.flatnonzero(want[:, label] == want[:, label].max())
            assign(patient, int(best[np.argmax(want_images[best])]))
    for patient in tie_break:
        if out[patient] < 0:
            assign(patient, int(np.argmax(want_images)))
    return [names[i] for i in out]


def split_positives(table: ImageTable, assignment: list[str], split: str = "val") -> dict[str, int]:
    """Positive images per finding (or images per class) in `split`."""
    index = [i for i, s in enumerate(assignment) if s == split]
    labels = np.nan_to_num(table.labels[index], nan=0.0) > 0.5
    return {f: int(n) for f, n in zip(table.findings, labels.sum(axis=0), strict=True)}


def describe_split(table: ImageTable, assignment: list[str]) -> str:
    """Images per split and validation positives per finding, with the findings that have none."""
    counts = {s: assignment.count(s) for s in SPLITS}
    val = split_positives(table, assignment, "val")
    kind = "positives" if table.task == "multilabel" else "images"
    lines = [
        "split: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        f"validation {kind} per {'finding' if table.task == 'multilabel' else 'class'}: "
        + ", ".join(f"{f} {n}" for f, n in val.items()),
    ]
    missing = [f for f, n in val.items() if n == 0]
    if missing and counts["val"]:
        lines.append(
            f"warning: no validation {kind} for {missing}: their thresholds fall back to 0.5 "
            "and their AUROC is not estimable"
        )
    return "\n".join(lines)


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
