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
    return ImageTable(
        keys,
        np.array(labels),
        ["NORMAL", "PNEUMONIA"],
        "multiclass",
        patients,
        official_split=official,
    )


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


# --- issue 11, items 2, 6, 7 ---------------------------------------------------------------


def _multilabel_table(n_patients: int, n_test: int, test_label: list[float]) -> ImageTable:
    """Findings A and B (B the rarer on train rows, many patients with both), then `n_test`
    official test images all labelled `test_label`."""
    rng = np.random.default_rng(7)
    labels = [[float(rng.random() < 0.4), float(rng.random() < 0.3)] for _ in range(n_patients)]
    labels += [test_label] * n_test
    patients = [f"p{i}" for i in range(n_patients + n_test)]
    split = ["train"] * n_patients + ["test"] * n_test
    return ImageTable(
        [f"{p}.png" for p in patients],
        np.array(labels),
        ["A", "B"],
        "multilabel",
        patients,
        official_split=split,
    )


def test_official_test_labels_do_not_change_the_split():
    """Item 6: the train/val split depends on the train/val rows only, not on the test labels."""
    only_a = patient_level_split(_multilabel_table(200, 300, [1.0, 0.0]), 0.2, seed=0)
    only_b = patient_level_split(_multilabel_table(200, 300, [0.0, 1.0]), 0.2, seed=0)
    assert only_a[:200] == only_b[:200]
    without_test = patient_level_split(_multilabel_table(200, 0, [0.0, 0.0]), 0.2, seed=0)
    assert only_a[:200] == without_test


@pytest.mark.parametrize("fraction", [0.15, 0.25])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_nih_finding_reaches_validation(nih_1000, fraction, seed, capsys):
    """Item 7: rare findings (Hernia: 2 patients) have validation positives, and train keeps
    some; the split is printed with the per-finding validation positives."""
    from cxr.data.nih import read_nih
    from cxr.data.splits import describe_split, split_positives

    table = read_nih(nih_1000)
    a = patient_level_split(table, fraction, seed=seed)
    check_patient_disjoint(table, a)
    val, train = split_positives(table, a, "val"), split_positives(table, a, "train")
    assert all(n > 0 for n in val.values()), val
    assert all(n > 0 for n in train.values()), train
    assert a.count("val") / len(a) == pytest.approx(fraction, abs=0.02)
    assert a == patient_level_split(table, fraction, seed=seed)  # deterministic by seed
    text = describe_split(table, a)
    assert f"Hernia {val['Hernia']}" in text and "warning" not in text


def test_a_finding_missing_from_validation_is_warned():
    from cxr.data.splits import describe_split

    table = _table(n_patients=10, images_per_patient=1)
    a = ["val" if i == 0 else "train" for i in range(10)]
    cls = table.findings[table.class_index()[0]]
    other = [f for f in table.findings if f != cls]
    assert f"no validation images for {other}" in describe_split(table, a)


def _with_official_val(n_val: int, n_train: int) -> ImageTable:
    table = _table(n_patients=n_val + n_train, images_per_patient=1)
    table.official_split = ["val"] * n_val + ["train"] * n_train
    return table


def test_a_small_official_val_split_does_not_replace_val_fraction():
    """Item 2: Kermany's 16-image val/ joins the pool; the split is carved by val_fraction."""
    from cxr.data.splits import choose_val_source

    table = _with_official_val(16, 300)
    assert choose_val_source(table, "auto") == "fraction"
    a = patient_level_split(table, 0.2, seed=0)
    assert a.count("val") == pytest.approx(0.2 * len(table), abs=2)
    official = patient_level_split(table, 0.2, seed=0, val_source="official")
    assert official == ["val"] * 16 + ["train"] * 300
    big = _with_official_val(250, 1000)
    assert choose_val_source(big, "auto") == "official"
    assert choose_val_source(big, "fraction") == "fraction"
    with pytest.raises(DataError, match="no official validation split"):
        choose_val_source(_table(n_patients=5), "official")
