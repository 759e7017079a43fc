"""The leak guard (issue 11 item 1) and the run's label policy at evaluation (item 4), on real
images: an NIH run evaluated on NIH images it was trained on under another download's paths,
renamed copies of Kermany training images, and a CheXpert-style CSV with uncertain labels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cxr.cli import main
from cxr.config import DataConfig, config_from_dict
from cxr.errors import ConfigError
from cxr.evaluate import evaluate_run
from cxr.train import train

pytestmark = pytest.mark.slow


def _train(data, root: Path, **data_cfg) -> Path:
    cfg = config_from_dict(
        {
            "data": {"path": str(data), "val_fraction": 0.25} | data_cfg,
            "preprocess": {"image_size": 32},
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "seed": 0,
                "cache_dir": str(root / "cache"),
                "early_stopping_patience": 0,
            },
            "out_dir": str(root / "run"),
        }
    )
    return train(cfg, progress=False).run_dir


def _rows(run: Path) -> list[dict]:
    with open(run / "split.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_image_names_that_identify_an_image():
    from cxr.data.leakage import image_name

    assert image_name("/a/b/00000013_005.png") == "00000013_005.png"  # NIH Image Index
    assert image_name("/x/NORMAL/IM-0115-0001.jpeg") == "IM-0115-0001.jpeg"  # Kermany
    assert image_name("/x/PNEUMONIA/person1_bacteria_1.jpeg") == "person1_bacteria_1.jpeg"
    key = "/d/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert image_name(key) == "patient00001/study1/view1_frontal.jpg"
    assert image_name("/data/pneumoniamnist.npz#test/17") == "pneumoniamnist.npz#test/17"
    assert image_name("/any/folder/scan_001.png") is None  # not unique beyond its folder


@pytest.fixture(scope="module")
def nih_run(nih_1000, tmp_path_factory) -> Path:
    return _train(nih_1000, tmp_path_factory.mktemp("nih-leak"), limit=300)


def test_own_training_images_from_another_download_are_refused(
    nih_run, nih_samples, tmp_path, capsys
):
    """nih-chestxray14-samples holds NIH-1000 images at another resolution and path: the old
    path comparison called them external data and scored them."""
    seen = {r["patient_id"] for r in _rows(nih_run) if r["split"] in ("train", "val")}
    with open(nih_samples / "Data_Entry_2017.csv", newline="") as fh:
        samples = list(csv.DictReader(fh))
    expected = sum(str(int(r["Patient ID"])) in seen for r in samples)
    assert expected > 0  # the premise: some of the samples' patients trained this run

    assert main(["evaluate", "--model", str(nih_run), "--data", str(nih_samples)]) == 2
    err = capsys.readouterr().err
    assert "refusing to evaluate" in err and f"{expected} of {len(samples)} evaluated" in err
    assert "--allow-overlap" in err
    r0 = tmp_path / "r0"
    assert (
        main(
            [
                "report",
                "--model",
                str(nih_run),
                "--data",
                str(nih_samples),
                "--bootstrap",
                "20",
                "--no-gallery",
                "--out",
                str(r0),
            ]
        )
        == 2
    )
    assert "refusing" in capsys.readouterr().err and not r0.exists()

    out = tmp_path / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(nih_run),
                "--data",
                str(nih_samples),
                "--json",
                str(out),
                "--allow-overlap",
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    first = next(iter(metrics))
    assert first == "leakage" and metrics[first]["warning"].startswith("NOT HELD-OUT DATA")
    assert metrics["leakage"]["n_overlapping_images"] == expected
    assert metrics["leakage"]["by"]["patient id"] == expected

    report_dir = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--model",
                str(nih_run),
                "--data",
                str(nih_samples),
                "--bootstrap",
                "20",
                "--no-gallery",
                "--out",
                str(report_dir),
                "--allow-overlap",
            ]
        )
        == 0
    )
    report = json.loads((report_dir / "report.json").read_text())
    assert next(iter(report)) == "leakage" and report["leakage"]["n_overlapping_images"] == expected
    html = (report_dir / "report.html").read_text()
    assert html.index("NOT HELD-OUT DATA") < html.index('id="notice"') < html.index("<h1>")


@pytest.fixture(scope="module")
def kermany_copy_run(kermany_train, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A run on 40 real Kermany images whose validation split holds a renamed copy of one of
    its training images; and a folder of renamed copies of its training images."""
    root = tmp_path_factory.mktemp("kermany-copies")
    data = root / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / cls).mkdir(parents=True)
        for f in sorted((kermany_train / cls).iterdir())[:20]:
            shutil.copy(f, data / cls / f.name)
    original = sorted((data / "NORMAL").iterdir())[0]
    copy = data / "NORMAL" / "copy_of_a_training_image.jpeg"
    shutil.copy(original, copy)
    from cxr.data.folder import read_folder

    table = read_folder(data)
    keep_in_train = table.patient_ids[table.keys.index(str(original))]
    patients = sorted(set(table.patient_ids) - {keep_in_train})
    val_patients = set(patients[1::4]) | {table.patient_ids[table.keys.index(str(copy))]}
    split = root / "split.csv"
    with open(split, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "patient_id", "split"])
        for key, patient in zip(table.keys, table.patient_ids, strict=True):
            writer.writerow([key, patient, "val" if patient in val_patients else "train"])
    run = _train(data, root, split_file=str(split))
    renamed = root / "renamed"
    for cls in ("NORMAL", "PNEUMONIA"):
        rows = [r for r in _rows(run) if r["split"] == "train" and f"/{cls}/" in r["key"]]
        (renamed / cls).mkdir(parents=True)
        for k, row in enumerate(rows[1:4]):
            shutil.copy(row["key"], renamed / cls / f"external_{k}.jpeg")
    return run, renamed, copy


def test_renamed_copies_of_training_images_are_refused(kermany_copy_run):
    from cxr.errors import LeakageError

    run, renamed, _ = kermany_copy_run
    n = sum(1 for _ in renamed.rglob("*.jpeg"))
    with pytest.raises(LeakageError, match=f"{n} of {n} evaluated image.*{n} by identical pixels"):
        evaluate_run(run, DataConfig(path=str(renamed)), progress=False)


def test_calibrate_refuses_validation_images_that_are_training_images(kermany_copy_run, capsys):
    run, _, copy = kermany_copy_run
    assert main(["calibrate", "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert "refusing to calibrate" in err and copy.name in err and "identical pixels" in err
    assert not (run / "calibration.json").exists()
    assert main(["calibrate", "--model", str(run), "--allow-overlap"]) == 0
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["leakage"]["n_overlapping_images"] == 1


def test_held_out_images_pass_the_guard(kermany_copy_run, kermany_train, tmp_path):
    run, _, _ = kermany_copy_run
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / cls).mkdir()
        for f in sorted((kermany_train / cls).iterdir())[300:306]:
            shutil.copy(f, tmp_path / cls / f.name)
    metrics = evaluate_run(run, DataConfig(path=str(tmp_path)), progress=False)
    assert metrics["leakage"]["n_overlapping_images"] == 0
    assert metrics["leakage"]["content_compared"] is True
    assert metrics["n_images"] == 12


def _chexpert_csv(path: Path, images: list[Path], values: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Edema", "Effusion"])
        for image, (a, b) in zip(images, values, strict=True):
            writer.writerow([str(image), "F", 40, "Frontal", "PA", a, b])
    return path


def test_evaluate_and_report_read_labels_under_the_runs_uncertain_policy(kermany_train, tmp_path):
    """Issue 11 item 4: a run trained with data.uncertain=ones was evaluated under the
    default 'ignore', so thresholds chosen under one policy were scored under another."""
    files = sorted((kermany_train / "PNEUMONIA").iterdir())
    cycle = [["1", "0"], ["0", "1"], ["-1", "0"], ["0", "-1"], ["1", "1"], ["0", "0"]]
    train_csv = _chexpert_csv(
        tmp_path / "labels.csv", files[:36], [cycle[i % 6] for i in range(36)]
    )
    run = _train(train_csv, tmp_path, uncertain="ones")
    held_out = files[1000:1012]
    values = [cycle[i % 6] for i in range(12)]
    external = _chexpert_csv(tmp_path / "external.csv", held_out, values)
    as_ones = [sum(v[j] in ("1", "-1") for v in values) for j in range(2)]

    metrics = evaluate_run(run, DataConfig(path=str(external)), progress=False)
    assert [metrics["per_finding"][f]["n_positive"] for f in ("Edema", "Effusion")] == as_ones
    from cxr.report import build_report

    report = build_report(
        run,
        DataConfig(path=str(external)),
        out_dir=tmp_path / "report",
        n_boot=20,
        gallery=False,
        progress=False,
    )
    found = report["results"]["findings"]
    assert [found[f]["n_positive"] for f in ("Edema", "Effusion")] == as_ones
    with pytest.raises(ConfigError, match="data.uncertain"):
        evaluate_run(run, DataConfig(path=str(external), uncertain="zeros"), progress=False)
