"""One decision rule per run (issue 11, item 3): a two-class softmax run has one threshold on its
positive class, so every image is called exactly one class and its top finding is that class;
a run with more classes calls the argmax; model.json, predict, the folder CSV, serve and the
metrics all read the same rule."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxr.decision import decision_rule, positive_index, rule_from_json
from cxr.errors import DecisionError
from cxr.metrics import choose_thresholds, compute_metrics


def two_class_scores(seed: int = 0, n: int = 60):
    """Kermany-like validation scores: well separated, so Youden ties over a wide interval."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 2, n)
    p = np.where(true == 1, rng.uniform(0.55, 0.999, n), rng.uniform(0.001, 0.45, n))
    return np.eye(2)[true], np.stack([1 - p, p], axis=1)


def test_two_class_thresholds_are_one_rule_not_two_that_disagree():
    # Chosen one-vs-rest, NORMAL and PNEUMONIA each got an extreme of the tied interval (e.g.
    # NORMAL 0.55, PNEUMONIA 0.55 both on the data) and an image between them was called
    # neither class. Now: one threshold t on PNEUMONIA, NORMAL shown at 1 - t.
    y, s = two_class_scores()
    t = choose_thresholds(y, s, "multiclass", findings=["NORMAL", "PNEUMONIA"])
    assert t[0] == pytest.approx(1.0 - t[1])
    assert 0.45 < t[1] < 0.55  # inside the gap between the classes, not on either edge
    m = compute_metrics(y, s, ["NORMAL", "PNEUMONIA"], "multiclass", t)
    assert m["decision"]["rule"] == "binary" and m["decision"]["positive_class"] == "PNEUMONIA"
    assert m["accuracy"] == 1.0
    # any probabilities: exactly one class called, and it is the top finding
    rule = decision_rule("multiclass", ["NORMAL", "PNEUMONIA"], t)
    p = np.linspace(0, 1, 1001)
    calls = rule.calls(np.stack([1 - p, p], axis=1))
    assert (calls.sum(axis=1) == 1).all()
    assert (rule.top(np.stack([1 - p, p], axis=1)) == calls.argmax(axis=1)).all()


def test_disagreeing_saved_thresholds_still_give_one_call_per_image():
    # A model.json from before the rule (NORMAL 0.018, PNEUMONIA 0.987, as issue 11 found):
    # the positive class's threshold is the rule, so P(PNEUMONIA) = 0.985 is NORMAL, not neither.
    rule = rule_from_json(None, "multiclass", ["NORMAL", "PNEUMONIA"], [0.018, 0.987])
    assert rule.kind == "binary" and rule.threshold == pytest.approx(0.987)
    calls = rule.calls(np.array([[0.015, 0.985], [0.01, 0.99], [0.99, 0.01]]))
    assert calls.tolist() == [[True, False], [False, True], [True, False]]


def test_positive_class_is_the_one_not_named_normal():
    assert positive_index(["NORMAL", "PNEUMONIA"]) == 1
    assert positive_index(["effusion", "No Finding"]) == 0
    assert positive_index(["cat", "dog"]) == 1
    y, s = two_class_scores(1)
    t = choose_thresholds(y[:, ::-1], s[:, ::-1], "multiclass", findings=["PNEUMONIA", "NORMAL"])
    rule = decision_rule("multiclass", ["PNEUMONIA", "NORMAL"], t)
    assert rule.positive == 0 and t[1] == pytest.approx(1 - t[0])


def test_more_classes_are_called_by_argmax_and_per_class_figures_follow_it():
    y = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    s = np.array(
        [
            [0.5, 0.4, 0.1],
            [0.6, 0.3, 0.1],
            [0.45, 0.5, 0.05],
            [0.3, 0.5, 0.2],
            [0.1, 0.2, 0.7],
            [0.2, 0.35, 0.45],
        ]
    )
    # thresholds that would call class 0 on every image: the rule ignores them
    m = compute_metrics(y, s, ["a", "b", "c"], "multiclass", [0.1, 0.9, 0.9])
    assert m["decision"]["rule"] == "argmax"
    assert m["accuracy"] == 1.0
    for name in ("a", "b", "c"):
        assert m["per_finding"][name]["sensitivity"] == 1.0
        assert m["per_finding"][name]["specificity"] == 1.0


def test_a_decision_field_that_does_not_fit_the_run_is_refused():
    with pytest.raises(DecisionError, match="positive_class"):
        rule_from_json(
            {"rule": "binary", "positive_class": "CAT", "threshold": 0.5},
            "multiclass",
            ["NORMAL", "PNEUMONIA"],
            [0.5, 0.5],
        )
    with pytest.raises(DecisionError, match="per_finding"):
        rule_from_json({"rule": "argmax"}, "multilabel", ["a", "b"], [0.5, 0.5])
    with pytest.raises(DecisionError, match=r"\[0, 1\]"):
        rule_from_json(
            {"rule": "binary", "positive_class": "PNEUMONIA", "threshold": 2},
            "multiclass",
            ["NORMAL", "PNEUMONIA"],
            [0.5, 0.5],
        )


def test_real_run_states_one_rule_that_predict_and_the_folder_csv_follow(
    tiny_kermany_run, kermany_train, tmp_path
):
    """A real Kermany run: model.json's "decision" is one binary rule, and `cxr predict` and
    folder prediction call each image exactly one class, with top_finding that class."""
    from cxr.data.image_io import decode_image
    from cxr.inference import Predictor

    info = json.loads((tiny_kermany_run / "model.json").read_text())
    decision = info["decision"]
    assert decision["rule"] == "binary" and decision["positive_class"] == "PNEUMONIA"
    assert info["thresholds"]["NORMAL"] == pytest.approx(1 - info["thresholds"]["PNEUMONIA"])
    assert decision["threshold"] == info["thresholds"]["PNEUMONIA"]

    predictor = Predictor.from_run_dir(tiny_kermany_run)
    assert predictor.engine.info.decision.to_json() == decision
    files = sorted((kermany_train / "NORMAL").glob("*.jpeg"))[-6:]
    files += sorted((kermany_train / "PNEUMONIA").glob("*.jpeg"))[-6:]
    for f in files:
        answer = predictor.predict(decode_image(f)).as_dict()
        called = [row["finding"] for row in answer["findings"] if row["positive"]]
        assert called == [answer["top_finding"]], (f.name, answer)

    folder = tmp_path / "images"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    from cxr.cli import main

    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(tiny_kermany_run), str(folder), "--out", str(out)]) == 0
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(files)
    for row in rows:
        called = [c for c in ("NORMAL", "PNEUMONIA") if row[f"{c}_positive"] == "1"]
        assert called == [row["top_finding"]], row
