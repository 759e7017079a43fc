"""The leak guard: refuse to score a run on images (or patients) it was trained or validated on.

A run's figures mean something only on images it never saw. Comparing file paths is not enough:
the same NIH image ships in several downloads (nih-chestxray14-samples holds images of
nih-chestxray14-1000 at another resolution), a patient's other images are as good as seen, and a
copied file has a new path. So evaluated images are matched with the run's training and
validation images (split.csv) three ways:

- patient id, where the reader found one (NIH `Patient ID`, Kermany `personN` / `IM-XXXX`,
  CheXpert `patientNNNNN`); a folder reader that fell back to the file name has none;
- image name: NIH `Image Index`, Kermany file name, CheXpert `patientN/studyM/view.jpg`,
  MedMNIST `file.npz#split/index`; other file names are not unique enough to compare;
- content: a hash of the preprocessed pixels (a function of the decoded pixels, at the run's
  preprocessing), taken from the cache the evaluation builds anyway. The run's side is written
  at training time (`image_hashes.csv`), so nothing is decoded twice.

`evaluate`, `report`, `calibrate` and `tune --test-data` refuse by default; with allow_overlap
they go on and their outputs say so first.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from cxr.data.folder import parse_kermany_name
from cxr.data.table import ImageTable
from cxr.errors import DataError, LeakageError

HASH_FILE = "image_hashes.csv"  # in the run folder: key, split, content hash of train/val images
_SHOWN = 10  # images named in a refusal
_NIH_NAME = re.compile(r"^\d{8}_\d{3}\.png$", re.IGNORECASE)
_CHEXPERT_PATIENT = re.compile(r"^patient\d+$", re.IGNORECASE)


@dataclass
class Overlap:
    """Evaluated images that match the run's `against` splits, and how."""

    n_evaluated: int
    against: tuple[str, ...]
    matches: dict[str, list[str]] = field(default_factory=dict)  # evaluated key -> reasons
    patients: set[str] = field(default_factory=set)
    content_checked: bool = False
    allowed: bool = False

    @property
    def n_images(self) -> int:
        return len(self.matches)

    def add(self, key: str, reason: str, patient: str | None = None) -> None:
        reasons = self.matches.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)
        if patient is not None:
            self.patients.add(patient)

    def counts(self) -> dict[str, int]:
        out = {"patient id": 0, "image name": 0, "identical pixels": 0}
        for reasons in self.matches.values():
            for reason in reasons:
                out[next(k for k in out if reason.startswith(k))] += 1
        return out

    def summary(self) -> str:
        """One sentence: how many, how matched, which (the first few)."""
        by = ", ".join(f"{n} by {k}" for k, n in self.counts().items() if n)
        shown = [f"{Path(k).name} ({'; '.join(r)})" for k, r in list(self.matches.items())[:_SHOWN]]
        more = f", and {self.n_images - _SHOWN} more" if self.n_images > _SHOWN else ""
        patients = f", {len(self.patients)} patient(s)" if self.patients else ""
        return (
            f"{self.n_images} of {self.n_evaluated} evaluated image(s){patients} were in the "
            f"run's {' or '.join(self.against)} data ({by}): {', '.join(shown)}{more}"
        )

    def as_dict(self) -> dict:
        """For the first lines of a JSON output."""
        return {
            "n_overlapping_images": self.n_images,
            "n_evaluated_images": self.n_evaluated,
            "n_overlapping_patients": len(self.patients),
            "against": list(self.against),
            "by": self.counts(),
            "content_compared": self.content_checked,
            "allowed": self.allowed,
            "warning": (
                f"NOT HELD-OUT DATA: {self.summary()}. Figures on these images are optimistic."
                if self.n_images
                else None
            ),
            "images": {k: r for k, r in self.matches.items()},
        }


def image_name(key: str) -> str | None:
    """A dataset-wide image identifier from a key, or None when the name is not one."""
    if "#" in key:  # in-memory arrays (MedMNIST): "file.npz#split/index"
        file, _, rest = key.partition("#")
        return f"{PurePath(file).name}#{rest}"
    parts = PurePath(key).parts
    for i, part in enumerate(parts[:-1]):
        if _CHEXPERT_PATIENT.match(part) and len(parts) - i == 3:
            return "/".join(parts[i:])  # patientN/studyM/viewK_frontal.jpg
    name = parts[-1] if parts else key
    if _NIH_NAME.match(name):
        return name
    stem = PurePath(name).stem
    if parse_kermany_name(stem)[0] != stem:
        return name
    return None


def _real_patient(key: str, patient: str) -> str | None:
    """The patient id, unless the reader fell back to the file name (no patient known)."""
    return None if patient in (PurePath(key).stem, key) else patient


def pixel_hashes(pixels: np.ndarray) -> list[str]:
    """A 128-bit BLAKE2 hash per image of a (N, S, S) uint8 array (e.g. a cache's memory map)."""
    return [
        hashlib.blake2b(np.ascontiguousarray(p).data, digest_size=16).hexdigest() for p in pixels
    ]


def write_image_hashes(path: str | Path, splits: dict[str, tuple[list[str], list[str]]]) -> None:
    """The run's hash file: {split: (keys, hashes)} as rows of key, split, hash."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "split", "hash"])
        for split, (keys, hashes) in splits.items():
            writer.writerows([k, split, h] for k, h in zip(keys, hashes, strict=True))
    tmp.replace(path)


def _read_run_split(run_dir: Path, against: tuple[str, ...]) -> list[tuple[str, str, str]]:
    path = run_dir if run_dir.suffix == ".csv" else run_dir / "split.csv"
    if not path.is_file():
        raise DataError("split file not found: cannot check the data for leaks", path=str(path))
    with open(path, newline="") as fh:
        return [
            (row["key"], row.get("patient_id") or "", row["split"])
            for row in csv.DictReader(fh)
            if row.get("split") in against
        ]


def _read_run_hashes(run_dir: Path, against: tuple[str, ...]) -> dict[str, tuple[str, str]] | None:
    path = run_dir / HASH_FILE
    if run_dir.suffix == ".csv":
        return None
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        return {
            r["hash"]: (r["key"], r["split"]) for r in csv.DictReader(fh) if r["split"] in against
        }


def find_overlap(
    table: ImageTable,
    run_dir: str | Path,
    hashes: list[str] | None = None,
    against: tuple[str, ...] = ("train", "val"),
) -> Overlap:
    """Which images of `table` match the run's `against` images by patient, name or content.

    run_dir: a run folder (its split.csv and image_hashes.csv), or a split file alone.

    hashes: `pixel_hashes` of the table's images (same order), at the run's preprocessing;
    None compares ids and names only (the cheap first pass, before any image is cached).
    """
    run_dir = Path(run_dir)
    rows = _read_run_split(run_dir, against)
    patients: dict[str, str] = {}
    names: dict[str, tuple[str, str]] = {}
    for key, patient, split in rows:
        real = _real_patient(key, patient)
        if real is not None:
            patients.setdefault(real, split)
        name = image_name(key)
        if name is not None:
            names.setdefault(name, (key, split))
    overlap = Overlap(len(table), against)
    for key, patient in zip(table.keys, table.patient_ids, strict=True):
        real = _real_patient(key, patient)
        if real is not None and real in patients:
            overlap.add(key, f"patient id {real} in {patients[real]}", real)
        name = image_name(key)
        if name is not None and name in names:
            overlap.add(key, f"image name in {names[name][1]}", real)
    if hashes is not None:
        run_hashes = _read_run_hashes(run_dir, against)
        overlap.content_checked = run_hashes is not None
        for key, patient, digest in zip(table.keys, table.patient_ids, hashes, strict=True):
            if run_hashes is not None and digest in run_hashes:
                other, split = run_hashes[digest]
                overlap.add(
                    key,
                    f"identical pixels to {Path(other).name} in {split}",
                    _real_patient(key, patient),
                )
    return overlap


def check_overlap(overlap: Overlap, allow: bool, what: str = "evaluate") -> Overlap:
    """Raise LeakageError on any overlap unless allowed; print a warning when allowed."""
    overlap.allowed = allow
    if not overlap.n_images:
        return overlap
    if not allow:
        raise LeakageError(
            f"refusing to {what} a run on images it has seen: {overlap.summary()}. Evaluate "
            "held-out data, or pass --allow-overlap to go on anyway (the outputs will say the "
            "figures are optimistic)"
        )
    print(f"warning: {overlap.summary()}: figures on them are optimistic (--allow-overlap)")
    return overlap
