"""Configs are typed: unknown or invalid fields are named before any work starts."""

from __future__ import annotations

import json

import pytest

from cxr.cli import main
from cxr.config import RunConfig, load_config, save_config
from cxr.errors import ConfigError


def test_config_round_trip(tmp_path):
    cfg = RunConfig.model_validate({"train": {"lr": 3e-4}, "model": {"arch": "resnet34"}})
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg


def test_yaml_config(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 7\npreprocess:\n  clahe: false\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.epochs == 7 and cfg.preprocess.clahe is False


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"train": {"learning_rate": 1}}, "train.learning_rate"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"preprocess": {"filter": "sharpen"}}, "preprocess.filter"),
    ],
)
def test_bad_config_names_the_field(tmp_path, raw, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)


def test_unknown_architecture_is_refused_before_any_data_work(tmp_path, capsys):
    """The architecture names live in the model registry (cxr.models), which the config module
    cannot import (data flows one way), so `cxr train` checks it first, before reading data."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": {"arch": "vgg16"}, "data": {"path": "/nowhere"}}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model.arch" in err and "vgg16" in err and "densenet121" in err
    assert "/nowhere" not in err  # refused before the data was looked at
    assert not (tmp_path / "r").exists()


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["train", "--set", "train.lr=-1", "--out", str(tmp_path / "r2")]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err
