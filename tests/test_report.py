"""The evaluation report: patient bootstrap intervals, validation-only operating points, and the
HTML built from real runs on ../shared/data, opened in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.bootstrap import (
    bootstrap_ci,
    bootstrap_intervals,
    per_replicate,
    weighted_auroc,
    weighted_average_precision,
    weighted_rates,
)
from cxr.calibration import apply_temperature
from cxr.cli import main
from cxr.config import config_from_dict
from cxr.metrics import choose_thresholds
from cxr.report.build import OPERATING_POINTS, ScoredImages, analyse

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = (
    "summary",
    "operating",
    "curves",
    "calibration",
    "subgroups",
    "tta",
    "gallery",
    "model-card",
    "methods",
)


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def test_weighted_statistics_match_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
    weights = rng.integers(0, 3, size=(6, 300)).astype(float)
    auc = weighted_auroc(y, s, weights)
    ap = weighted_average_precision(y, s, weights)
    rates = weighted_rates(y, s >= 0.4, weights)
    for b, w in enumerate(weights):
        keep = w > 0
        assert auc[b] == pytest.approx(roc_auc_score(y[keep], s[keep], sample_weight=w[keep]))
        assert ap[b] == pytest.approx(
            average_precision_score(y[keep], s[keep], sample_weight=w[keep])
        )
        pred, pos = s >= 0.4, y == 1
        assert rates["sensitivity"][b] == pytest.approx(w[pred & pos].sum() / w[pos].sum())
        assert rates["ppv"][b] == pytest.approx(w[pred & pos].sum() / w[pred].sum())
    # Any scikit-learn metric with sample_weight is a statistic too (looped).
    generic = per_replicate(roc_auc_score, y, s)(weights)
    np.testing.assert_allclose(generic, auc)


def _coverage(datasets, groups_of, n_boot=300) -> float:
    hits = 0
    for seed, (y, s, groups, truth) in enumerate(datasets):
        ci = bootstrap_ci(
            lambda w, y=y, s=s: weighted_auroc(y, s, w),
            len(y),
            groups_of(groups),
            n_boot=n_boot,
            seed=seed,
        )
        hits += ci.low <= truth <= ci.high
    return hits / len(datasets)


def test_bootstrap_interval_covers_the_true_auroc_at_the_nominal_rate():
    # Binormal scores: negatives N(0, 1), positives N(d, 1); true AUROC = Phi(d / sqrt 2).
    rng = np.random.default_rng(42)
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    datasets = []
    for _ in range(200):
        y = np.r_[np.ones(60), np.zeros(140)].astype(int)
        s = rng.normal(d * y, 1.0)
        datasets.append((y, s, None, truth))
    coverage = _coverage(datasets, lambda g: None)
    assert 0.89 <= coverage <= 0.99, coverage


def test_patient_resampling_keeps_coverage_where_image_resampling_loses_it():
    # Four images per patient sharing a strong patient effect: images are not independent.
    rng = np.random.default_rng(7)
    d, patient_sd, image_sd = 1.5, 1.0, 0.3
    truth = norm.cdf(d / np.sqrt(2 * (patient_sd**2 + image_sd**2)))
    datasets = []
    for _ in range(150):
        patient_label = (rng.random(80) < 0.35).astype(int)
        patient_label[:2] = [0, 1]
        effect = rng.normal(0, patient_sd, 80)
        groups = np.repeat(np.arange(80), 4)
        y = patient_label[groups]
        s = d * y + effect[groups] + rng.normal(0, image_sd, groups.size)
        datasets.append((y, s, groups, truth))
    by_patient = _coverage(datasets, lambda g: g)
    by_image = _coverage(datasets, lambda g: None)
    assert by_patient >= 0.88, by_patient
    assert by_image <= by_patient - 0.15, (by_image, by_patient)


def test_bootstrap_is_seeded_and_says_not_estimable():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    s = rng.random(100)
    stats = {
        "auc": lambda w: weighted_auroc(y, s, w),
        "none": lambda w: weighted_auroc(np.zeros(100, int), s, w),
    }
    a = bootstrap_intervals(stats, 100, n_boot=200, seed=5)
    b = bootstrap_intervals(stats, 100, n_boot=200, seed=5)
    assert a["auc"] == b["auc"]
    assert a["auc"].low < a["auc"].estimate < a["auc"].high
    assert a["none"].estimate is None and a["none"].low is None
    assert not a["none"].estimable


# ---------------------------------------------------------------------------------------------
# Operating points come from validation only
# ---------------------------------------------------------------------------------------------


def _scored(y, logits, patients=None):
    patients = patients or [f"p{i}" for i in range(len(y))]
    return ScoredImages(y.astype(float), logits, patients, {}, [str(i) for i in range(len(y))])


def _shifted_sets(seed=0):
    rng = np.random.default_rng(seed)
    y_val = (rng.random((300, 2)) < 0.3).astype(float)
    y_test = (rng.random((300, 2)) < 0.3).astype(float)
    val = _scored(y_val, 2.0 * y_val + rng.normal(0, 1, y_val.shape))
    # The evaluation scores are shifted: thresholds chosen on them would be very different.
    test = _scored(y_test, 2.0 * y_test + rng.normal(0, 1, y_test.shape) + 1.5)
    return val, test


def test_operating_points_are_chosen_on_validation_never_on_the_evaluated_data():
    val, test = _shifted_sets()
    findings, temperature = ["A", "B"], 1.3
    results, arrays = analyse(findings, "multilabel", val, test, temperature, n_boot=50)
    val_probs = apply_temperature(val.logits, "multilabel", temperature)
    test_probs = apply_temperature(test.logits, "multilabel", temperature)
    for method in OPERATING_POINTS:
        expected = choose_thresholds(val.labels, val_probs, "multilabel", method)
        leaked = choose_thresholds(test.labels, test_probs, "multilabel", method)
        got = [results["thresholds"][method][f] for f in findings]
        np.testing.assert_array_equal(got, expected)
        assert np.all(np.abs(expected - leaked) > 1e-3)  # a leak would show
        for j, f in enumerate(findings):
            assert results["findings"][f]["operating_points"][method]["threshold"] == expected[j]

    # Scramble the evaluated labels: every metric moves, no threshold does.
    scrambled = _scored(np.random.default_rng(9).permutation(test.labels), test.logits)
    again, _ = analyse(findings, "multilabel", val, scrambled, temperature, n_boot=50)
    assert again["thresholds"] == results["thresholds"]
    assert (
        again["findings"]["A"]["auroc"]["estimate"] != results["findings"]["A"]["auroc"]["estimate"]
    )


def test_report_states_the_decision_rule_and_its_argmax_figures_for_three_classes():
    """Issue 11, item 3: the report's headline calls are predict's (argmax for 3 classes)."""
    rng = np.random.default_rng(0)
    true_val, true_test = rng.integers(0, 3, 150), rng.integers(0, 3, 150)
    val = _scored(np.eye(3)[true_val], 2.0 * np.eye(3)[true_val] + rng.normal(0, 1, (150, 3)))
    test = _scored(np.eye(3)[true_test], 2.0 * np.eye(3)[true_test] + rng.normal(0, 1, (150, 3)))
    results, _ = analyse(["a", "b", "c"], "multiclass", val, test, 1.0, n_boot=20)
    assert results["decision"]["rule"] == "argmax"
    probs = apply_temperature(test.logits, "multiclass", 1.0)
    called = probs.argmax(axis=1)
    at_rule = results["at_decision_rule"]
    assert at_rule["accuracy"] == pytest.approx(np.mean(called == true_test))
    for j, name in enumerate("abc"):
        sens = np.mean(called[true_test == j] == j)
        assert at_rule["per_finding"][name]["sensitivity"] == pytest.approx(sens)


def test_a_finding_without_positives_is_not_estimable():
    val, test = _shifted_sets(1)
    test.labels[:, 1] = 0.0
    test.labels[:5, 0] = np.nan  # unknown labels are left out, not counted as negatives
    results, _ = analyse(["A", "B"], "multilabel", val, test, 1.0, n_boot=50)
    b = results["findings"]["B"]
    assert not b["estimable"]
    assert b["auroc"]["estimate"] is None and b["auprc"]["estimate"] is None
    assert b["operating_points"]["youden"]["sensitivity"]["estimate"] is None
    assert b["operating_points"]["youden"]["specificity"]["estimate"] is not None
    a = results["findings"]["A"]
    assert a["n_positive"] + a["n_negative"] == 295
    assert results["mean_auroc"] == a["auroc"]["estimate"]


def test_split_auto_refuses_the_training_data_of_a_run_without_a_test_split(tmp_path):
    from cxr.data.table import ImageTable
    from cxr.errors import DataError
    from cxr.report.build import select_split

    (tmp_path / "split.csv").write_text("key,patient_id,split\na,1,train\nb,2,val\n")
    own = ImageTable(["a", "b"], np.eye(2), ["x", "y"], "multiclass", ["1", "2"])
    with pytest.raises(DataError, match="no test split"):
        select_split(own, tmp_path, "auto", "DATA")
    _, split, warnings = select_split(own, tmp_path, "all", "DATA")
    assert split == "all" and len(warnings) == 2  # seen in training, and in validation
    external = ImageTable(["c"], np.eye(2)[:1], ["x", "y"], "multiclass", ["3"])
    assert select_split(external, tmp_path, "auto", "DATA")[1:] == ("all", [])
    with pytest.raises(DataError, match="'test' split"):
        select_split(external, tmp_path, "test", "DATA")


# ---------------------------------------------------------------------------------------------
# Real runs on ../shared/data
# ---------------------------------------------------------------------------------------------


def _train(data_path, out, cache, **overrides):
    from cxr.train import train

    raw = {
        "data": {"path": str(data_path), "limit": 160, "val_fraction": 0.25, "test_fraction": 0.25},
        "preprocess": {"image_size": 48},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "lr": 2e-3,
            "seed": 0,
            "deterministic": True,
            "cache_dir": str(cache),
            "early_stopping_patience": 0,
        },
        "out_dir": str(out),
    }
    for section, values in overrides.items():
        raw[section] |= values
    return train(config_from_dict(raw), progress=False).run_dir


@pytest.fixture(scope="module")
def kermany_run(kermany_train, tmp_path_factory):
    root = tmp_path_factory.mktemp("kermany")
    return _train(kermany_train, root / "run", root / "cache")


@pytest.fixture(scope="module")
def kermany_report(kermany_run, kermany_train):
    out = kermany_run / "report"
    code = main(
        [
            "report",
            "--model",
            str(kermany_run),
            "--data",
            str(kermany_train),
            "--bootstrap",
            "200",
            "--tta",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def nih_report(nih_1000, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    run = _train(
        nih_1000,
        root / "run",
        root / "cache",
        data={"limit": 300, "val_fraction": 0.3, "test_fraction": 0.3},
        preprocess={"image_size": 64},
        train={"epochs": 1, "batch_size": 32},
    )
    code = main(
        [
            "report",
            "--model",
            str(run),
            "--data",
            str(nih_1000),
            "--bootstrap",
            "100",
            "--no-gallery",
        ]
    )
    assert code == 0
    return run / "report"


def _load(report_dir: Path) -> dict:
    return json.loads((report_dir / "report.json").read_text())


@pytest.mark.slow
def test_report_of_a_real_run_has_intervals_calibration_tta_and_a_model_card(
    kermany_report, kermany_run
):
    report = _load(kermany_report)
    res = report["results"]
    assert report["data"]["split"] == "test"  # the run's own data: its held-out test split
    split_rows = (kermany_run / "split.csv").read_text().splitlines()
    assert res["n_images"] == sum(1 for row in split_rows if row.endswith(",test"))
    for name in ("NORMAL", "PNEUMONIA"):
        f = res["findings"][name]
        auroc = f["auroc"]
        assert 0.0 <= auroc["low"] <= auroc["estimate"] <= auroc["high"] <= 1.0
        assert f["prevalence"] == pytest.approx(f["n_positive"] / res["n_images"])
        for method in OPERATING_POINTS:
            point = f["operating_points"][method]
            c = point["confusion"]
            assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == res["n_images"]
            sens = point["sensitivity"]
            assert sens["estimate"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
            assert sens["low"] <= sens["estimate"] <= sens["high"]
    cal = report["method"]["calibration"]
    assert cal["temperature"] > 0 and cal["validation_nll_after"] <= cal["validation_nll_before"]
    assert (kermany_run / "calibration.json").is_file()
    assert set(report["tta"]["findings"]["NORMAL"]) == {"plain", "tta", "delta"}
    card = report["model_card"]
    assert "not a medical device" in card["not_a_medical_device"]
    assert "Kermany" in card["label_quality"] and card["limitations"]
    html = (kermany_report / "report.html").read_text()
    # Self-contained: every image inline, every link in-page, no script.
    assert re.findall(r'src="([^"]*)"', html)
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html)
    )
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', html))
    assert "<script" not in html.lower() and "<link" not in html.lower()
    try:
        import cxr.explain.gradcam  # noqa: F401
    except ImportError:
        assert "left out" in report["gallery"]["note"]
    else:
        assert report["gallery"]["n"] > 0
        assert html.count('alt="NORMAL true positive"') + html.count('alt="NORMAL false positive"')


@pytest.mark.slow
def test_operating_points_and_temperature_do_not_depend_on_the_evaluated_labels(
    kermany_report, kermany_run, tmp_path
):
    from cxr.calibration import validation_images
    from cxr.run import load_run
    from cxr.runtime import forward, select_runtime

    report = _load(kermany_report)
    # 1. The thresholds are exactly those chosen on the run's validation images.
    run = load_run(kermany_run)
    images = validation_images(run, progress=False)
    logits, _ = forward(run.model, images.pixels, select_runtime("cpu"))
    val_probs = apply_temperature(logits, run.task, report["method"]["calibration"]["temperature"])
    for method in OPERATING_POINTS:
        expected = choose_thresholds(images.table.labels, val_probs, run.task, method)
        got = [report["results"]["thresholds"][method][f] for f in run.findings]
        np.testing.assert_allclose(got, expected, atol=1e-6)

    # 2. Evaluate a copy of the test images with their labels swapped (external data): every
    # metric changes, the operating points and the temperature must not.
    swapped = tmp_path / "swapped"
    for row in (kermany_run / "split.csv").read_text().splitlines()[1:]:
        key, _, split = row.rsplit(",", 2)
        if split == "test":
            label = Path(key).parent.name
            other = "PNEUMONIA" if label == "NORMAL" else "NORMAL"
            (swapped / other).mkdir(parents=True, exist_ok=True)
            shutil.copy(key, swapped / other / Path(key).name)
    out = tmp_path / "swapped-report"
    assert (
        main(
            [
                "report",
                "--model",
                str(kermany_run),
                "--data",
                str(swapped),
                "--bootstrap",
                "50",
                "--no-gallery",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    other = _load(out)
    assert other["data"]["split"] == "all"  # external data: every image
    assert other["results"]["thresholds"] == report["results"]["thresholds"]
    assert other["method"]["calibration"]["temperature"] == pytest.approx(
        report["method"]["calibration"]["temperature"]
    )
    a = report["results"]["findings"]["PNEUMONIA"]["auroc"]["estimate"]
    b = other["results"]["findings"]["PNEUMONIA"]["auroc"]["estimate"]
    assert b == pytest.approx(1.0 - a, abs=0.05)


@pytest.mark.slow
def test_cli_calibrate_saves_the_temperature_the_predictor_uses(
    kermany_report, kermany_run, capsys
):
    from cxr.calibration import load_calibration
    from cxr.inference.predictor import Predictor

    assert main(["calibrate", "--model", str(kermany_run)]) == 0
    assert "temperature" in capsys.readouterr().out
    saved = load_calibration(kermany_run)
    assert saved.temperature == pytest.approx(
        _load(kermany_report)["method"]["calibration"]["temperature"], rel=1e-4
    )
    assert Predictor.from_run_dir(kermany_run).temperature == saved.temperature


@pytest.mark.slow
def test_bad_evaluation_data_gets_an_error_naming_the_problem(
    kermany_run, nih_samples, capsys, tmp_path
):
    code = main(
        [
            "report",
            "--model",
            str(kermany_run),
            "--data",
            str(nih_samples),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "findings differ" in err and "NORMAL" in err and "Effusion" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_nih_report_shows_subgroups_by_sex_age_and_view(nih_report):
    report = _load(nih_report)
    sub = report["subgroups"]
    assert set(sub) == {"sex", "age", "view"}
    n = report["results"]["n_images"]
    assert sum(level["n_images"] for level in sub["sex"]["levels"].values()) == n
    assert set(sub["view"]["levels"]) <= {"AP", "PA"}
    assert set(sub["age"]["levels"]) <= {"<40", "40-59", "60-79", "80+"}
    html = (nih_report / "report.html").read_text()
    for label in ("age band", "view position", "sex"):
        assert f"<h3>{label}</h3>" in html
    findings = report["results"]["findings"]
    not_estimable = [name for name, f in findings.items() if not f["estimable"]]
    if not_estimable:  # rare findings in 90 images: shown as words, never as a number
        assert findings[not_estimable[0]]["auroc"]["estimate"] is None
        assert re.search(rf"<td>{not_estimable[0]}</td>.*?not estimable", html, re.S)
    for level in sub["sex"]["levels"].values():
        for f in level["findings"].values():
            interval = f["auroc"]
            if interval["estimate"] is None:
                assert not (f["n_positive"] and f["n_negative"])


# ---------------------------------------------------------------------------------------------
# Headless Chromium
# ---------------------------------------------------------------------------------------------


def _chromium(html: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        message = f"headless Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *flags,
        html.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # no JavaScript, hence no console errors
    return result


@pytest.mark.slow
@pytest.mark.parametrize("which", ["kermany_report", "nih_report"])
def test_report_opens_in_headless_chromium(which, request, tmp_path):
    import cv2

    report_dir = request.getfixturevalue(which)
    html = report_dir / "report.html"
    dom = _chromium(html, tmp_path, "--dump-dom").stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    assert "not a medical device" in dom
    assert dom.count("data:image/png;base64,") >= 4  # ROC, PR, confusion, reliability at least
    assert "AUROC (95% CI)" in dom

    shot = tmp_path / "report.png"
    _chromium(
        html, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars"
    )
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 20  # text and figures, not a blank page
