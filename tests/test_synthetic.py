"""The synthetic phantoms: reproducible, in range, findings where their masks say, round trip."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from cxr.data.phantom import FINDINGS, PREVALENCE, _draw_layout, _heart_mask, make_phantom
from cxr.data.synthetic import (
    _patients,
    load_masks,
    read_synthetic,
    write_synthetic_dataset,
)
from cxr.errors import DataError


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), disk) > 0


def test_same_seed_gives_the_same_phantom():
    a, ma = make_phantom(np.random.default_rng(7), 128)
    b, mb = make_phantom(np.random.default_rng(7), 128)
    c, _ = make_phantom(np.random.default_rng(8), 128)
    assert np.array_equal(a, b)
    assert ma.keys() == mb.keys() and all(np.array_equal(ma[k], mb[k]) for k in ma)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_image_is_float32_in_unit_range_with_bool_masks(size):
    for seed in range(3):
        img, masks = make_phantom(np.random.default_rng(seed), size, set(FINDINGS))
        assert img.dtype == np.float32 and img.shape == (size, size)
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert img.std() > 0.05  # not a blank frame
        assert list(masks) == list(FINDINGS)
        for m in masks.values():
            assert m.dtype == bool and m.shape == (size, size) and m.any()


def test_explicit_findings_are_exactly_those_planted():
    _, masks = make_phantom(np.random.default_rng(0), 96, {"Nodule"})
    assert set(masks) == {"Nodule"}
    _, masks = make_phantom(np.random.default_rng(0), 96, set())
    assert masks == {}


def test_unknown_finding_or_tiny_size_is_rejected():
    with pytest.raises(ValueError, match="Pneumonia"):
        make_phantom(np.random.default_rng(0), 128, {"Pneumonia"})
    with pytest.raises(ValueError, match="size"):
        make_phantom(np.random.default_rng(0), 32)


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_pixels_only_near_its_mask(finding):
    size = 128
    for seed in range(3):
        others = {f for f in FINDINGS if f != finding and (seed + FINDINGS.index(f)) % 2}
        without, _ = make_phantom(np.random.default_rng(seed), size, others)
        with_, masks = make_phantom(np.random.default_rng(seed), size, others | {finding})
        diff = np.abs(with_ - without)
        near = _near(masks[finding], radius=6)  # blur, warp and soft edges spread a few pixels
        assert diff[~near].max() < 0.005, f"{finding} seed {seed} changed pixels far away"
        assert diff[near].sum() / diff.sum() > 0.999
        assert diff[masks[finding]].mean() > 0.03, f"{finding} seed {seed} is barely visible"


def test_findings_change_intensity_in_the_expected_direction():
    size = 128
    for finding, sign in (
        ("Effusion", 1),
        ("Cardiomegaly", 1),
        ("Nodule", 1),
        ("Pneumothorax", -1),
    ):
        without, _ = make_phantom(np.random.default_rng(3), size, set())
        with_, masks = make_phantom(np.random.default_rng(3), size, {finding})
        assert sign * (with_ - without)[masks[finding]].mean() > 0.02, finding


def test_cardiomegaly_makes_the_heart_measurably_wider():
    for seed in range(20):
        lay = _draw_layout(np.random.default_rng(seed))
        thorax_px = 2 * lay.half_w * 256
        ratios = [
            np.ptp(np.flatnonzero(_heart_mask(lay, 256, big).any(axis=0))) / thorax_px
            for big in (False, True)
        ]
        assert 0.37 < ratios[0] < 0.48, ratios
        assert ratios[1] > 0.54 and ratios[1] - ratios[0] > 0.08, ratios


def test_prevalence_is_roughly_as_designed():
    n = 400
    counts = dict.fromkeys(FINDINGS, 0)
    for i in range(n):
        _, masks = make_phantom(np.random.default_rng([11, i]), 64)
        for f in masks:
            counts[f] += 1
    for f in FINDINGS:
        assert abs(counts[f] / n - PREVALENCE[f]) < 0.07, (f, counts[f] / n)  # ~3 SD at n=400


def test_some_patients_have_two_images():
    rows = _patients(600, seed=0)
    ids = [r[1] for r in rows]
    per_patient = np.unique(ids, return_counts=True)[1]
    assert len(rows) == 600 and set(per_patient) == {1, 2}
    assert 0.05 < np.mean(per_patient == 2) < 0.3
    first = {r[1]: r[2:4] for r in rows}
    assert all(first[r[1]] == r[2:4] for r in rows)  # one patient, one sex and age


def test_written_dataset_round_trips_through_read_synthetic(tmp_path):
    root = write_synthetic_dataset(tmp_path / "synth", n=16, size=96, seed=5, progress=False)
    table = read_synthetic(root)
    assert len(table) == 16 and table.task == "multilabel" and table.source == "synthetic"
    assert table.findings == list(FINDINGS)
    assert set(table.meta) == {"sex", "age", "view"} and len(table.meta["age"]) == 16
    assert len(set(table.patient_ids)) <= 16
    for i, key in enumerate(table.keys):
        assert key.startswith(str(root.resolve())) and key.endswith(f"synth_{i:05d}.png")
        pixels = cv2.imread(key, cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint8 and pixels.shape == (96, 96)
        img, masks = make_phantom(np.random.default_rng([5, i]), 96)
        assert np.abs(pixels / 255.0 - img).max() <= 0.5 / 255 + 1e-6
        on_disk = load_masks(root, key)
        assert set(on_disk) == set(masks)
        assert all(np.array_equal(on_disk[f], masks[f]) for f in masks)
        assert table.labels[i].tolist() == [float(f in masks) for f in FINDINGS]
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    marker = json.loads((root / "synthetic.json").read_text())
    assert marker["seed"] == 5 and marker["n"] == 16 and marker["size"] == 96


def test_identical_dataset_is_reused_and_a_different_one_replaced(tmp_path):
    root = write_synthetic_dataset(tmp_path, n=4, size=64, seed=1, progress=False)
    first = root / "images" / "synth_00000.png"
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    write_synthetic_dataset(tmp_path, n=4, size=64, seed=1, progress=False)
    assert first.stat().st_mtime_ns == stamp
    write_synthetic_dataset(tmp_path, n=3, size=64, seed=2, progress=False)
    assert len(read_synthetic(tmp_path)) == 3
    assert len(list((tmp_path / "images").iterdir())) == 3


def test_an_interrupted_run_is_replaced_not_refused(tmp_path):
    root = write_synthetic_dataset(tmp_path, n=3, size=64, progress=False)
    marker = json.loads((root / "synthetic.json").read_text())
    (root / "synthetic.json").write_text(json.dumps({**marker, "complete": False}))
    (root / "labels.csv").unlink()
    write_synthetic_dataset(tmp_path, n=3, size=64, progress=False)
    assert len(read_synthetic(tmp_path)) == 3
    assert json.loads((root / "synthetic.json").read_text())["complete"] is True


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=str(tmp_path)):
        write_synthetic_dataset(tmp_path, n=2, size=64, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "images").exists()
    (tmp_path / "synthetic.json").write_text('{"someone": "else"}')
    with pytest.raises(DataError, match="not a synthetic data set"):
        write_synthetic_dataset(tmp_path, n=2, size=64, progress=False)


def test_missing_labels_csv_names_the_file(tmp_path):
    with pytest.raises(DataError, match="labels.csv"):
        read_synthetic(tmp_path)
