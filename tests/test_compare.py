"""`cxr compare`: the paired AUROC difference of two runs on the same images, with DeLong's test
or a paired patient bootstrap (issue 11, "what researchers expect")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr.compare import bootstrap_paired, compare_scores, delong_paired, format_comparison


def brute_force_delong(y, a, b) -> tuple[float, float]:
    """DeLong's variance of AUC_b - AUC_a by the definition (double loop over pairs)."""

    def psi(x, z):
        return 1.0 if x > z else 0.5 if x == z else 0.0

    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    v10 = np.array([[np.mean([psi(s[i], s[j]) for j in neg]) for i in pos] for s in (a, b)])
    v01 = np.array([[np.mean([psi(s[i], s[j]) for i in pos]) for j in neg] for s in (a, b)])
    s10, s01 = np.cov(v10), np.cov(v01)
    c = np.array([-1.0, 1.0])
    return float(v10[1].mean() - v10[0].mean()), float(c @ (s10 / m + s01 / n) @ c)


def correlated_models(n: int, effect: float, seed: int):
    """Two noisy readers of one latent signal; B sees it `effect` more clearly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    latent = y * 1.0 + rng.normal(0, 1, n)
    a = latent + rng.normal(0, 1.0, n)
    b = latent + rng.normal(0, 1.0 - effect, n)
    return y, a, b


def test_delong_matches_the_definition_with_ties():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    a = np.array([0.9, 0.4, 0.5, 0.5, 0.1, 0.3, 0.6, 0.7])
    b = np.array([0.8, 0.8, 0.3, 0.2, 0.1, 0.3, 0.5, 0.9])
    r = delong_paired(y, a, b)
    diff, var = brute_force_delong(y, a, b)
    assert r["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    assert r["auroc_b"] == pytest.approx(roc_auc_score(y, b))
    assert r["difference"] == pytest.approx(diff)
    assert r["se"] == pytest.approx(np.sqrt(var))
    assert r["low"] < r["difference"] < r["high"]


def test_delong_holds_its_level_under_the_null_and_finds_a_real_difference():
    # A and B equally good: about 5% of tests reject at 0.05 (a calibrated test)
    p_null = [delong_paired(*correlated_models(120, 0.0, seed))["p_value"] for seed in range(300)]
    assert 0.02 <= np.mean(np.array(p_null) < 0.05) <= 0.09
    # B much better on 400 images: found, and the interval is above 0
    r = delong_paired(*correlated_models(400, 0.8, 1))
    assert r["difference"] > 0 and r["p_value"] < 0.001 and r["low"] > 0


def test_identical_models_differ_by_zero_with_p_one():
    y, a, _ = correlated_models(50, 0.0, 0)
    r = delong_paired(y, a, a)
    assert r["difference"] == 0.0 and r["p_value"] == 1.0


def test_paired_bootstrap_agrees_with_delong_and_resamples_patients():
    y, a, b = correlated_models(300, 0.5, 3)
    d = delong_paired(y, a, b)
    bs = bootstrap_paired(y, a, b, n_boot=2000, seed=0)
    assert bs["difference"] == pytest.approx(d["difference"])
    assert bs["se"] == pytest.approx(d["se"], rel=0.2)
    # two images per patient: the patient bootstrap draws 150 patients, and is wider than
    # treating the 300 images as independent when a patient's images agree
    patients = np.repeat(np.arange(150), 2)
    y2, a2, b2 = (np.repeat(v[:150], 2) for v in (y, a, b))
    by_image = bootstrap_paired(y2, a2, b2, None, 2000, 0)
    by_patient = bootstrap_paired(y2, a2, b2, patients, 2000, 0)
    assert by_patient["n_patients"] == 150
    assert by_patient["high"] - by_patient["low"] > 1.2 * (by_image["high"] - by_image["low"])


def test_compare_scores_masks_unknown_labels_and_prints_a_table():
    y, a, b = correlated_models(200, 0.5, 4)
    y2 = np.stack([y, 1 - y], axis=1).astype(float)
    y2[:20, 1] = np.nan
    scores_a = np.stack([a, -a], axis=1)
    scores_b = np.stack([b, -b], axis=1)
    result = compare_scores(y2, scores_a, scores_b, ["x", "y"])
    assert result["findings"]["y"]["n_positive"] + result["findings"]["y"]["n_negative"] == 180
    assert json.loads(json.dumps(result)) == result
    text = format_comparison(result)
    assert "B - A" in text and "95% interval" in text and "DeLong" in text
    assert "\nx " in text and "\ny " in text


@pytest.mark.slow
def test_cli_compare_two_real_runs_on_the_same_images(kermany_train, tmp_path, capsys):
    from tiny_runs import train_kermany_run

    from cxr.cli import main

    run_a = train_kermany_run(kermany_train, tmp_path / "a", 80, 32)
    run_b = train_kermany_run(kermany_train, tmp_path / "b", 80, 32, lr=5e-3)
    out = tmp_path / "cmp.json"
    assert (
        main(
            [
                "compare",
                str(run_a),
                str(run_b),
                "--data",
                str(kermany_train),
                "--split",
                "val",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["findings"]) == {"NORMAL", "PNEUMONIA"}
    n_val = sum(line.endswith(",val") for line in (run_a / "split.csv").read_text().splitlines())
    assert result["n_images"] == n_val > 0 and result["split"] == "val"
    r = result["findings"]["PNEUMONIA"]
    assert 0 <= r["auroc_a"] <= 1 and r["low"] <= r["difference"] <= r["high"]
    assert "B - A" in capsys.readouterr().out
