"""Patient-level splits: no patient on two sides, seeded, stratified, reproducible from a file."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.data.splits import (
    check_patient_disjoint,
    patient_level_split,
    read_split_file,
    write_split_file,
)
from cxr.data.table import ImageTable
from cxr.errors import DataError


def _table(n_patients=200, images_per_patient=3, seed=0, official=None) -> ImageTable:
    rng = np.random.default_rng(seed)
    keys, patients, labels = [], [], []
    for p in range(n_patients):
        positive = rng.random() < 0.3
        for k in range(images_per_patient):
            keys.append(f"p{p}_img{k}.png")
            patients.append(f"p{p}")
            labels.append([0.0, 1.0] if positive else [1.0, 0.0])
    return ImageTable(keys, np.array(labels), ["NORMAL", "PNEUMONIA"], "multiclass", patients,
                      official_split=official)  # fmt: skip


def test_no_patient_in_two_splits_and_fractions_hold():
    table = _table()
    assignment = patient_level_split(table, val_fraction=0.15, test_fraction=0.15, seed=1)
    check_patient_disjoint(table, assignment)  # raises on a leak
    by_patient = {}
    for patient, split in zip(table.patient_ids, assignment, strict=False):
        assert by_patient.setdefault(patient, split) == split
    shares = {s: assignment.count(s) / len(assignment) for s in ("train", "val", "test")}
    assert shares["val"] == pytest.approx(0.15, abs=0.03)
    assert shares["test"] == pytest.approx(0.15, abs=0.03)


def test_split_is_stratified_and_seeded():
    table = _table()
    a = patient_level_split(table, 0.2, seed=3)
    assert a == patient_level_split(table, 0.2, seed=3)
    assert a != patient_level_split(table, 0.2, seed=4)
    y = table.class_index()
    val = np.array(a) == "val"
    assert y[val].mean() == pytest.approx(y.mean(), abs=0.05)


def test_official_test_split_is_kept():
    table = _table(n_patients=50, images_per_patient=1)
    official = ["test" if i < 10 else "train" for i in range(len(table))]
    table.official_split = official
    a = patient_level_split(table, 0.2, test_fraction=0.3, seed=0)
    assert [s for s in a[:10]] == ["test"] * 10
    assert "test" not in a[10:]  # no extra test carved when an official one exists


def test_leak_is_detected():
    table = _table(n_patients=2, images_per_patient=2)
    with pytest.raises(DataError, match="patient p0"):
        check_patient_disjoint(table, ["train", "val", "train", "train"])


def test_split_file_round_trip_and_errors(tmp_path):
    table = _table(n_patients=20)
    a = patient_level_split(table, 0.25, seed=0)
    path = tmp_path / "split.csv"
    write_split_file(path, table, a)
    assert read_split_file(path, table) == a
    bigger = _table(n_patients=21)
    with pytest.raises(DataError, match="not in the split file"):
        read_split_file(path, bigger)
    path.write_text(path.read_text().replace(",val\n", ",validation\n", 1))
    with pytest.raises(DataError, match=r"row \d+.*unknown split"):
        read_split_file(path, table)


def test_kermany_split_keeps_patients_apart(kermany_train):
    from cxr.data.folder import read_folder

    table = read_folder(kermany_train)
    a = patient_level_split(table, 0.15, seed=0)
    check_patient_disjoint(table, a)
    patients = {}
    for p, s in zip(table.patient_ids, a, strict=False):
        patients.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in patients.values())
    assert len(patients) < len(table)  # Kermany has several images for some patients


def test_official_overlap_is_kept_and_never_widened(capsys):
    table = _table(n_patients=40, images_per_patient=2)
    # patient p0 has one image in the official test folder and one in train (as in Kermany)
    table.official_split = ["test"] + ["train"] * (len(table) - 1)
    a = patient_level_split(table, 0.5, seed=0)
    assert a[0] == "test" and a[1] == "train"  # never moved into our validation split
    check_patient_disjoint(table, a)
    assert "kept as published" in capsys.readouterr().out
