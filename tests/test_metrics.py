"""Metrics and thresholds against scikit-learn and hand-computed answers; plots write PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from cxr.metrics import choose_thresholds, compute_metrics, estimable_columns, format_table
from cxr.plots import plot_confusion, plot_pr, plot_roc, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The scikit-learn documentation's small case: AUROC 0.75, AP 0.8333.
HAND_Y = np.array([[0], [0], [1], [1]], dtype=np.float32)
HAND_S = np.array([[0.1], [0.4], [0.35], [0.8]])


def col(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def random_multilabel(n: int = 200, k: int = 3, seed: int = 0, nan_fraction: float = 0.2):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(np.float32)
    score = np.clip(0.5 * y + rng.normal(0.25, 0.2, (n, k)), 0, 1)
    y[rng.random((n, k)) < nan_fraction] = np.nan
    return y, score


def assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 0
    assert data.startswith(PNG_SIGNATURE)


# --- AUROC / AUPRC ---------------------------------------------------------------------------


def test_perfect_separation_gives_auroc_and_auprc_one():
    m = compute_metrics(col([0, 0, 1, 1]), col([0.1, 0.2, 0.8, 0.9]), ["a"], "multilabel", [0.5])
    assert m["auroc"]["a"] == 1.0
    assert m["auprc"]["a"] == 1.0


def test_reversed_scores_give_auroc_zero():
    m = compute_metrics(col([0, 0, 1, 1]), col([0.9, 0.8, 0.2, 0.1]), ["a"], "multilabel", [0.5])
    assert m["auroc"]["a"] == 0.0


def test_hand_computed_auroc_and_auprc():
    m = compute_metrics(HAND_Y, HAND_S, ["a"], "multilabel", [0.5])
    assert m["auroc"]["a"] == pytest.approx(0.75)
    assert m["auprc"]["a"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))  # 0.8333
    assert m["mean_auroc"] == pytest.approx(0.75)


def test_auroc_auprc_match_sklearn_with_nan_masked():
    y, s = random_multilabel()
    names = ["a", "b", "c"]
    m = compute_metrics(y, s, names, "multilabel", np.full(3, 0.5))
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        assert m["auroc"][name] == pytest.approx(roc_auc_score(y[known, j], s[known, j]))
        assert m["auprc"][name] == pytest.approx(average_precision_score(y[known, j], s[known, j]))
        pf = m["per_finding"][name]
        assert pf["n_positive"] == int(np.nansum(y[:, j]))
        assert pf["n_positive"] + pf["n_negative"] == int(known.sum())
    assert m["mean_auroc"] == pytest.approx(np.mean(list(m["auroc"].values())))
    assert m["n_images"] == len(y)


def test_per_finding_confusion_matches_sklearn():
    y, s = random_multilabel(seed=3)
    thresholds = np.array([0.3, 0.5, 0.7])
    m = compute_metrics(y, s, ["a", "b", "c"], "multilabel", thresholds)
    for j, name in enumerate(["a", "b", "c"]):
        known = ~np.isnan(y[:, j])
        tn, fp, fn, tp = confusion_matrix(
            y[known, j], s[known, j] >= thresholds[j], labels=[0, 1]
        ).ravel()
        pf = m["per_finding"][name]
        assert pf["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
        assert pf["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert pf["specificity"] == pytest.approx(tn / (tn + fp))
        assert pf["ppv"] == pytest.approx(tp / (tp + fp))
        assert pf["npv"] == pytest.approx(tn / (tn + fn))
        assert pf["threshold"] == thresholds[j]


def test_operating_point_statistics_on_hand_case():
    # threshold 0.4: predicted positive = {0.4, 0.8} -> tp 1 (0.8), fp 1 (0.4), fn 1, tn 1
    pf = compute_metrics(HAND_Y, HAND_S, ["a"], "multilabel", [0.4])["per_finding"]["a"]
    assert pf["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert pf["sensitivity"] == pf["specificity"] == pf["ppv"] == pf["npv"] == 0.5
    assert pf["f1"] == 0.5
    assert pf["prevalence"] == 0.5


# --- not estimable ---------------------------------------------------------------------------


def test_finding_without_positives_is_not_estimable():
    y = np.array([[0, 1], [0, 0], [0, 1], [np.nan, 0]], dtype=np.float32)
    s = np.array([[0.2, 0.9], [0.7, 0.1], [0.1, 0.8], [0.9, 0.3]])
    m = compute_metrics(y, s, ["none", "ok"], "multilabel", [0.5, 0.5])
    assert m["auroc"]["none"] is None
    assert m["auprc"]["none"] is None
    assert m["per_finding"]["none"]["estimable"] is False
    assert m["per_finding"]["none"]["sensitivity"] is None  # no positives: rate undefined
    assert m["mean_auroc"] == m["auroc"]["ok"] == 1.0
    assert "n/e" in format_table(m)


def test_all_unknown_finding_is_not_estimable_and_mean_is_none():
    y = np.full((3, 1), np.nan, dtype=np.float32)
    m = compute_metrics(y, col([0.1, 0.5, 0.9]), ["x"], "multilabel", [0.5])
    assert m["auroc"]["x"] is None and m["mean_auroc"] is None and m["mean_auprc"] is None
    assert m["accuracy"] is None
    assert m["per_finding"]["x"]["prevalence"] is None


def test_not_estimable_column_gets_fallback_threshold_and_flag():
    y = np.array([[1, 0], [1, 1], [1, 0], [np.nan, 1]], dtype=np.float32)
    s = np.array([[0.9, 0.2], [0.8, 0.7], [0.7, 0.3], [0.1, 0.9]])
    thresholds, estimable = choose_thresholds(y, s, "multilabel", return_estimable=True)
    assert thresholds[0] == 0.5
    assert estimable.tolist() == [False, True]
    assert estimable_columns(y).tolist() == [False, True]
    # labels 0,1,0,1 at 0.2,0.7,0.3,0.9: every threshold in (0.3, 0.7] is perfect; the middle
    # of that interval on the logit scale is 0.5 (logit 0.3 = -logit 0.7)
    assert thresholds[1] == pytest.approx(0.5)


# --- thresholds ------------------------------------------------------------------------------


def logit_middle(lo: float, hi: float) -> float:
    """The middle of (lo, hi] on the logit scale, where metrics puts tied thresholds."""
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    return float(1 / (1 + np.exp(-(logit(lo) + logit(hi)) / 2)))


def test_youden_threshold_on_hand_case():
    # at 0.7: sens 2/3, spec 1 -> J 0.667; at 0.4: sens 1, spec 3/4 -> J 0.75 (the maximum).
    # Every threshold in (0.3, 0.4] makes those calls: the middle of that interval is taken.
    y = col([0, 0, 0, 0, 1, 1, 1])
    s = col([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.9])
    t = choose_thresholds(y, s, "multilabel", "youden")[0]
    assert t == pytest.approx(logit_middle(0.3, 0.4))
    assert 0.3 < t < 0.4


def test_youden_tie_takes_middle_of_the_tied_interval():
    # Perfectly separated: every threshold in (0.2, 0.9] gives J = 1. The old rule took 0.9
    # (the lowest positive score, an extreme of the interval); the middle is stable under ties.
    y = col([0, 0, 0, 1, 1, 1])
    s = col([0.05, 0.1, 0.2, 0.9, 0.95, 0.99])
    assert choose_thresholds(y, s, "multilabel")[0] == pytest.approx(logit_middle(0.2, 0.9))
    # neighbouring tied points form one interval: J is 1/2 at 0.9 and at 0.5 (a positive and a
    # negative share 0.5), so every threshold in (0.1, 0.9] ties; its middle is taken
    y = col([1, 0, 1, 0])
    s = col([0.9, 0.5, 0.5, 0.1])
    assert choose_thresholds(y, s, "multilabel")[0] == pytest.approx(logit_middle(0.1, 0.9))


def test_youden_separate_ties_take_the_widest_interval():
    # 0.7 and 0.4 both give J = 2/3, in separate intervals (0.6, 0.7] and (0.2, 0.4]; the
    # wider one (logit scale) wins and its middle is taken
    y = col([0, 0, 0, 1, 1, 1])
    s = col([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    assert choose_thresholds(y, s, "multilabel")[0] == pytest.approx(logit_middle(0.2, 0.4))


def test_tied_middle_is_the_same_point_after_temperature_scaling():
    # the middle is taken on the logit scale, so calibration (logits / T) moves the threshold
    # with the scores: the calibrated threshold makes the same calls on any data
    from scipy.special import expit, logit

    y = col([0, 0, 0, 1, 1, 1])
    s = col([0.05, 0.1, 0.2, 0.9, 0.95, 0.99])
    t = choose_thresholds(y, s, "multilabel")[0]
    t_cal = choose_thresholds(y, expit(logit(s) / 2.5), "multilabel")[0]
    assert t_cal == pytest.approx(expit(logit(t) / 2.5))


def test_f1_threshold_on_hand_case():
    # F1 at 0.8: 0.667, at 0.4: 0.5, at 0.35: 0.8 (max), at 0.1: 0.667 -> the gap (0.1, 0.35]
    t = choose_thresholds(HAND_Y, HAND_S, "multilabel", "f1")[0]
    assert t == pytest.approx(logit_middle(0.1, 0.35))


def test_sensitivity_target_is_reached_by_highest_threshold():
    y, s = random_multilabel(n=300, k=2, seed=1, nan_fraction=0.1)
    thresholds = choose_thresholds(y, s, "multilabel", "sensitivity:0.95")
    for j in range(2):
        known = ~np.isnan(y[:, j])
        labels, scores = y[known, j] == 1, s[known, j]
        assert np.mean(scores[labels] >= thresholds[j]) >= 0.95
        chosen = scores[scores >= thresholds[j]].min()  # the lowest score still called
        below = scores[scores < thresholds[j]]
        if below.size:  # the threshold sits in the middle of the gap under that score
            assert thresholds[j] == pytest.approx(logit_middle(below.max(), chosen))
        higher = np.unique(scores[scores > chosen])
        if higher.size:  # the next distinct score up would miss the target
            assert np.mean(scores[labels] >= higher[0]) < 0.95


def test_specificity_target_is_kept_with_best_sensitivity():
    y, s = random_multilabel(n=300, k=2, seed=2, nan_fraction=0.1)
    thresholds = choose_thresholds(y, s, "multilabel", "specificity:0.9")
    for j in range(2):
        known = ~np.isnan(y[:, j])
        labels, scores = y[known, j] == 1, s[known, j]
        assert np.mean(scores[~labels] < thresholds[j]) >= 0.9
        lower = np.unique(scores[scores < thresholds[j]])
        if lower.size:  # the next distinct score down would break the target
            assert np.mean(scores[~labels] < lower[-1]) < 0.9


def test_multiclass_thresholds_are_per_column_one_vs_rest():
    y = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    s = np.array(
        [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.5, 0.2], [0.1, 0.2, 0.7]]
        + [[0.2, 0.2, 0.6]]
    )
    thresholds = choose_thresholds(y, s, "multiclass", "youden")
    assert thresholds.shape == (3,)
    # every class is perfectly separated one-vs-rest: the middle of each gap
    mids = [logit_middle(0.3, 0.6), logit_middle(0.3, 0.5), logit_middle(0.2, 0.6)]
    assert thresholds.tolist() == pytest.approx(mids)


# --- accuracy --------------------------------------------------------------------------------


def test_multiclass_argmax_accuracy_and_confusion_matrix():
    true = np.array([0, 0, 1, 1, 2, 2])
    s = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1], [0.3, 0.5, 0.2], [0.1, 0.2, 0.7]]
        + [[0.6, 0.2, 0.2]]
    )
    # thresholds play no part in argmax accuracy for K > 2
    m = compute_metrics(np.eye(3)[true], s, ["x", "y", "z"], "multiclass", [0.9, 0.9, 0.9])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == confusion_matrix(true, s.argmax(axis=1)).tolist()


def test_binary_multiclass_accuracy_thresholds_positive_column():
    true = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.35, 0.45, 0.4, 0.6, 0.9])
    s = np.stack([1 - p1, p1], axis=1)
    y = np.eye(2)[true]
    m = compute_metrics(y, s, ["normal", "pneumonia"], "multiclass", [0.5, 0.3])
    # at 0.3: predicted [0,1,1,1,1,1] -> 4 of 6 right (argmax would give 4/6 too, but differently)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 2], [0, 3]]
    m = compute_metrics(y, s, ["normal", "pneumonia"], "multiclass", [0.5, 0.42])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    m = compute_metrics(y, s, ["normal", "pneumonia"], "multiclass", [0.5, 0.39])
    assert m["accuracy"] == pytest.approx(5 / 6)


def test_multilabel_accuracy_is_mean_of_per_finding_accuracy_with_nan_masked():
    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.1], [0.6, 0.9], [0.4, 0.8], [0.1, 0.7]])
    m = compute_metrics(y, s, ["a", "b"], "multilabel", [0.5, 0.5])
    # a: predicted [1,1,0,0] vs [1,0,1,0] -> 2/4; b (3 known): [0,1,1] vs [0,1,0] -> 2/3
    assert m["per_finding"]["a"]["accuracy"] == pytest.approx(0.5)
    assert m["per_finding"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert "confusion_matrix" not in m


def test_metrics_are_json_ready():
    y, s = random_multilabel()
    m = compute_metrics(y, s, ["a", "b", "c"], "multilabel", choose_thresholds(y, s, "multilabel"))
    assert json.loads(json.dumps(m)) == m
    assert type(m["auroc"]["a"]) is float
    assert type(m["per_finding"]["a"]["confusion"]["tp"]) is int


def test_format_table_lists_findings_and_mean():
    y, s = random_multilabel()
    m = compute_metrics(y, s, ["Atelectasis", "Edema", "Hernia"], "multilabel", [0.5] * 3)
    table = format_table(m)
    for word in ("Atelectasis", "Edema", "Hernia", "mean", "AUROC", "AUPRC", "PPV", "NPV"):
        assert word in table
    assert f"{m['mean_auroc']:.3f}" in table


# --- bad inputs ------------------------------------------------------------------------------

GOOD_Y = col([0, 1, 0, 1])
GOOD_S = col([0.1, 0.9, 0.2, 0.8])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"y_true": np.array([0, 1, 0, 1])}, "y_true"),
        ({"y_score": np.array([0.1, 0.9, 0.2, 0.8])}, "y_score"),
        ({"y_score": col([0.1, 0.9, 0.2])}, "y_score"),
        ({"y_score": col([0.1, 1.5, 0.2, 0.8])}, "y_score"),
        ({"y_score": col([0.1, np.nan, 0.2, 0.8])}, "y_score"),
        ({"y_true": col([0, 2, 0, 1])}, "y_true"),
        ({"findings": ["a", "b"]}, "findings"),
        ({"thresholds": [0.5, 0.5]}, "thresholds"),
        ({"thresholds": [1.5]}, "thresholds"),
        ({"task": "binary"}, "task"),
    ],
)
def test_compute_metrics_rejects_bad_input_naming_the_argument(kwargs, argument):
    args = {
        "y_true": GOOD_Y,
        "y_score": GOOD_S,
        "findings": ["a"],
        "task": "multilabel",
        "thresholds": [0.5],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        compute_metrics(**args)


@pytest.mark.parametrize("method", ["otsu", "sensitivity", "sensitivity:1.5", "specificity:x"])
def test_choose_thresholds_rejects_unknown_method(method):
    with pytest.raises(ValueError, match="method"):
        choose_thresholds(GOOD_Y, GOOD_S, "multilabel", method)


def test_multiclass_requires_one_hot_labels():
    y = np.array([[1, 1], [0, 1]], dtype=np.float32)
    with pytest.raises(ValueError, match="y_true"):
        choose_thresholds(y, np.array([[0.5, 0.5], [0.2, 0.8]]), "multiclass")


# --- plots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 6])
def test_roc_and_pr_plots_write_png(tmp_path, k):
    y, s = random_multilabel(n=80, k=k, seed=k)
    y[:, -1] = 0  # one not-estimable finding is skipped, not drawn
    names = [f"finding {j}" for j in range(k)]
    thresholds = choose_thresholds(y, s, "multilabel")
    assert_png(plot_roc(y, s, names, thresholds, tmp_path / "roc.png"))
    assert_png(plot_pr(y, s, names, thresholds, tmp_path / "sub" / "pr.png"))


def test_confusion_plots_write_png(tmp_path):
    true = np.array([0, 1, 2, 2, 1, 0])
    s = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.8 + 0.2 / 3
    m = compute_metrics(np.eye(3)[true], s, ["a", "b", "c"], "multiclass", [0.5] * 3)
    assert_png(plot_confusion(m, tmp_path / "cm.png"))
    y, s = random_multilabel(n=50)
    m = compute_metrics(y, s, ["a", "b", "c"], "multilabel", [0.5] * 3)
    assert_png(plot_confusion(m, tmp_path / "cm_multilabel.png"))


def test_training_curves_plot_writes_png(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_mean_auroc": 0.7},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.55, "val_mean_auroc": None},
        {"epoch": 3, "train_loss": 0.4, "val_loss": 0.5, "val_mean_auroc": 0.8},
    ]
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="history"):
        plot_training_curves([], tmp_path / "empty.png")


def test_metric_intervals_resample_patients_and_bracket_the_estimates():
    from cxr.metrics import metric_intervals

    rng = np.random.default_rng(0)
    n = 200
    y = np.zeros((n, 2))
    y[:, 0] = rng.random(n) < 0.3
    y[:, 1] = np.nan  # a finding nobody labelled: not estimable, never a crash
    y[:5, 1] = 0
    scores = np.clip(y[:, :1] * 0.3 + rng.random((n, 1)) * 0.7, 0, 1)
    scores = np.hstack([scores, rng.random((n, 1))])
    metrics = compute_metrics(y, scores, ["A", "B"], "multilabel", np.array([0.5, 0.5]))
    patients = [str(i // 10) for i in range(n)]  # 20 patients of 10 images each
    out = metric_intervals(metrics, y, scores, patients, n_boot=200, seed=1)
    assert out["method"] == "patient bootstrap" and out["n_patients"] == 20
    a = out["per_finding"]["A"]
    assert a["auroc"]["estimate"] == pytest.approx(metrics["auroc"]["A"])
    assert a["sensitivity"]["estimate"] == pytest.approx(metrics["per_finding"]["A"]["sensitivity"])
    assert a["specificity"]["estimate"] == pytest.approx(metrics["per_finding"]["A"]["specificity"])
    for stat in a.values():
        assert stat["low"] <= stat["estimate"] <= stat["high"] and stat["n_boot"] == 200
    assert a["auroc"]["high"] - a["auroc"]["low"] > 0.02
    # without patient ids every image is its own patient
    by_image = metric_intervals(metrics, y, scores, None, n_boot=200, seed=1)
    assert by_image["method"] == "image bootstrap" and by_image["n_patients"] == n
    assert by_image["per_finding"]["A"]["auroc"] != a["auroc"]  # other resamples
    assert out["per_finding"]["B"]["auroc"] == {
        "estimate": None,
        "low": None,
        "high": None,
        "n_valid": 0,
        "n_boot": 200,
    }
    json.dumps(out)  # JSON-ready for val_metrics.json
    again = metric_intervals(metrics, y, scores, patients, n_boot=200, seed=1)
    assert again == out  # seeded
