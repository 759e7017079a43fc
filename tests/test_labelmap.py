"""Cross-dataset evaluation: `cxr evaluate --map SRC->DST` scores a model on the findings it shares
with data labelled in another label set (issue 11, "what researchers expect")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.errors import ConfigError
from cxr.labelmap import LABEL_SETS, canonical, match_findings


def test_nih_and_chexpert_share_their_findings_under_their_own_names():
    nih = LABEL_SETS["nih"][:-1]  # the 14 findings a NIH run predicts
    chexpert = LABEL_SETS["chexpert"]
    m = match_findings(nih, chexpert, "nih->chexpert")
    pairs = m.as_dict()["pairs"]
    assert pairs["Effusion"] == "Pleural Effusion"
    assert pairs["Pneumonia"] == "Pneumonia" and pairs["Cardiomegaly"] == "Cardiomegaly"
    assert set(pairs) == {
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
    }
    assert "Hernia" in m.as_dict()["model_only"] and "Fracture" in m.as_dict()["data_only"]
    assert "Effusion = Pleural Effusion" in m.names


def test_apply_takes_the_paired_columns():
    m = match_findings(["NORMAL", "PNEUMONIA"], ["Effusion", "Pneumonia"], "kermany->nih")
    labels = np.array([[1.0, 0.0], [np.nan, 1.0]])
    scores = np.array([[0.8, 0.2], [0.3, 0.7]])
    y, s, t = m.apply(labels, scores, np.array([0.6, 0.4]))
    assert y.tolist() == [[0.0], [1.0]] and s.tolist() == [[0.2], [0.7]] and t.tolist() == [0.4]
    assert canonical("Pleural_Effusion") == canonical("Effusion") == canonical("pleural effusion")


def test_a_users_own_names_come_from_a_yaml_file(tmp_path):
    path = tmp_path / "names.yaml"
    path.write_text("fluid: Effusion\nlung infection: Pneumonia\n")
    m = match_findings(["fluid", "lung infection", "other"], ["Pneumonia", "Effusion"], str(path))
    assert m.pairs == [(0, 1), (1, 0)]
    path.write_text("fluid: Pleural Fluid\n")
    with pytest.raises(ConfigError, match="'Pleural Fluid' is not a finding of the data"):
        match_findings(["fluid"], ["Effusion"], str(path))


def test_bad_maps_are_named():
    with pytest.raises(ConfigError, match="'mimic' is not one of nih, chexpert, kermany"):
        match_findings(["Effusion"], ["Effusion"], "nih->mimic")
    with pytest.raises(ConfigError, match="model's findings \\['cat'\\] are not nih names"):
        match_findings(["cat"], ["Effusion"], "nih->chexpert")
    with pytest.raises(ConfigError, match="share no finding"):
        match_findings(["Hernia"], ["Fracture"], "nih->chexpert")
    with pytest.raises(ConfigError, match="SRC->DST"):
        match_findings(["Hernia"], ["Fracture"], "no-such-file.yaml")


def test_a_kermany_model_is_evaluated_on_nih_pneumonia(
    tiny_kermany_run, nih_1000, tmp_path, capsys
):
    """Real data: the Kermany run's PNEUMONIA probability against NIH's Pneumonia label, on the
    840 NIH images; NORMAL has no NIH column and is reported as not scored."""
    from cxr.cli import main

    out = tmp_path / "m.json"
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_kermany_run),
            "--data",
            str(nih_1000),
            "--map",
            "kermany->nih",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["findings"] == ["PNEUMONIA = Pneumonia"]
    assert metrics["label_map"]["model_only"] == ["NORMAL"]
    assert metrics["n_images"] == 840
    pf = metrics["per_finding"]["PNEUMONIA = Pneumonia"]
    assert 0 < pf["n_positive"] < 840  # NIH's Pneumonia labels, not Kermany's
    assert metrics["auroc"]["PNEUMONIA = Pneumonia"] is not None
    assert "not in the data, so not scored: NORMAL" in capsys.readouterr().out
    # without a map the label sets do not match: a clear error, not a wrong score
    assert main(["evaluate", "--model", str(tiny_kermany_run), "--data", str(nih_1000)]) != 0
