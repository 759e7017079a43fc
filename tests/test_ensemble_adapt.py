"""`cxr ensemble` (a run folder averaging runs' logits) and `cxr adapt` (EM prior adjustment to
a new site's prevalence), on small real Kermany runs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import train_kermany_run

from cxr.adapt import adapt_run, compare_on_labelled, em_priors, prior_shift
from cxr.calibration import calibrate_run, load_calibration
from cxr.cli import main
from cxr.config import DataConfig, ModelConfig
from cxr.errors import ConfigError
from cxr.evaluate import evaluate_run
from cxr.inference.export import export_run
from cxr.models import build_model, check_arch
from cxr.run import load_run, split_keys

# ------------------------------------------------------------------------- ensemble model


def test_ensemble_forward_is_the_mean_of_the_members_logits():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="ensemble", members=["resnet18", "resnet18"])
    model = build_model(cfg, 3).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = torch.stack([m(x) for m in model.members]).mean(0)
        assert torch.allclose(model(x), want, atol=1e-5)
        assert model.pooled_features(x).shape == (2, 2 * 512)
    assert model.cam_layers()["last"] is model.members[0].cam_layers()["last"]
    with pytest.raises(ConfigError, match="not trained"):
        check_arch("ensemble")  # `cxr train` refuses it: ensembles are made by `cxr ensemble`
    with pytest.raises(ConfigError, match="at least 2"):
        build_model(ModelConfig(arch="ensemble", members=["resnet18"]), 3)


# ------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def two_runs(kermany_train, tmp_path_factory) -> tuple[Path, Path]:
    """Two ResNet-18s on one split (80 images, 32 px, one epoch), different seeds."""
    root = tmp_path_factory.mktemp("members")
    a = train_kermany_run(kermany_train, root / "a", 80, 32, seed=0)
    b = train_kermany_run(kermany_train, root / "b", 80, 32, seed=1)
    return a, b


@pytest.mark.slow  # trains a model
def test_ensemble_run_is_a_run_every_command_takes(two_runs, kermany_train, tmp_path):
    a, b = two_runs
    ens = tmp_path / "ens"
    assert main(["ensemble", str(a), str(b), "--out", str(ens), "--device", "cpu"]) == 0
    run = load_run(ens)
    assert run.config.model.arch == "ensemble" and run.config.model.members == ["resnet18"] * 2
    assert (ens / "split.csv").read_bytes() == (a / "split.csv").read_bytes()
    info = json.loads((ens / "model.json").read_text())
    assert [m["arch"] for m in info["members"]] == ["resnet18", "resnet18"]
    assert load_calibration(ens) is not None  # temperature refitted on validation

    # its logits are the mean of the members' on real validation images
    val = sorted(split_keys(ens, "val"))[:4]
    from cxr.data.image_io import decode_image
    from cxr.preprocess import normalize, preprocess, to_unit

    pixels = np.stack([preprocess(decode_image(k), run.config.preprocess) for k in val])
    x = normalize(to_unit(torch.from_numpy(pixels)[:, None]))
    with torch.no_grad():
        members = [load_run(r).model(x) for r in (a, b)]
        assert torch.allclose(run.model(x), (members[0] + members[1]) / 2, atol=1e-5)

    # evaluate: 20 real images none of the members saw, at the ensemble's thresholds
    used = _patients(ens)
    held_out = _site_folder(kermany_train, tmp_path / "held-out", used, 10, 10, labelled=True)
    metrics = evaluate_run(ens, DataConfig(path=str(held_out)), progress=False, device="cpu")
    assert metrics["mean_auroc"] is not None and metrics["n_images"] == 20
    assert metrics["decision"]["rule"] == "binary"

    # predict: a CSV for a folder of real images
    folder = tmp_path / "images"
    folder.mkdir()
    for key in val:
        shutil.copy(key, folder / Path(key).name)
    out_csv = tmp_path / "pred.csv"
    assert (
        main(
            ["predict", "--model", str(ens), str(folder), "--out", str(out_csv), "--device", "cpu"]
        )
        == 0
    )
    assert len(out_csv.read_text().strip().splitlines()) == 1 + len(val)

    # export: one ONNX graph that agrees with PyTorch
    result = export_run(ens)
    assert result.max_abs_diff <= 1e-4 and result.onnx_path.is_file()


@pytest.mark.slow  # trains a model
def test_ensemble_refuses_runs_on_different_splits(two_runs, kermany_train, tmp_path):
    a, _ = two_runs
    other = train_kermany_run(kermany_train, tmp_path / "c", 60, 32)  # another subset: other split
    with pytest.raises(ConfigError, match="split.csv differs"):
        from cxr.ensemble import make_ensemble

        make_ensemble([a, other], tmp_path / "ens", device="cpu", progress=False)
    assert not (tmp_path / "ens").exists()


# ------------------------------------------------------------------------- EM prior shift


def test_em_recovers_the_prior_of_simulated_calibrated_posteriors():
    rng = np.random.default_rng(0)
    # a calibrated binary model under prior 0.5: scores ~ N(+-1, 1), posterior from Bayes' rule
    y = rng.random(20_000) < 0.2  # the new site: prevalence 0.2
    s = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    p = 1 / (1 + np.exp(-2 * s))  # exact posterior for equal priors
    new, iterations = em_priors(np.stack([1 - p, p], 1), np.array([0.5, 0.5]))
    assert abs(new[1] - 0.2) < 0.01 and iterations > 1
    shift = prior_shift(p[:, None], np.array([0.5]), "multilabel")
    assert abs(shift["after"][0] - 0.2) < 0.01
    assert np.isclose(shift["shift"][0], np.log(shift["after"][0] / (1 - shift["after"][0])))


@pytest.fixture(scope="module")
def site_run(kermany_train, tmp_path_factory) -> Path:
    """A ResNet-18 trained 2 epochs on 240 real images (prevalence ~0.74), calibrated."""
    root = tmp_path_factory.mktemp("site")
    run = train_kermany_run(kermany_train, root, 240, 48, epochs=2)
    calibrate_run(run, progress=False, device="cpu")
    return run


def _patients(run: Path) -> set[str]:
    """The patients of the run's train and val splits (split.csv)."""
    with open(run / "split.csv", newline="") as fh:
        return {row["patient_id"] for row in csv.DictReader(fh) if row["split"] != "test"}


def _seen(path: Path, patients: set[str]) -> bool:
    """Kermany names carry the patient: person12_virus_3.jpeg, IM-0143-0001.jpeg."""
    stem = path.stem
    return any(stem == p or stem.startswith((p + "_", p + "-")) for p in patients)


def _site_folder(
    kermany_train: Path, root: Path, used: set[str], n_normal: int, n_pneu: int, labelled: bool
) -> Path:
    """A new 'site': images of patients the run never saw, NORMAL / PNEUMONIA as asked."""
    for cls, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneu)):
        files = [p for p in sorted((kermany_train / cls).iterdir()) if not _seen(p, used)]
        target = root / cls if labelled else root
        target.mkdir(parents=True, exist_ok=True)
        for i in np.random.default_rng(1).choice(len(files), n, replace=False):
            (target / files[i].name).symlink_to(files[i])
    return root


@pytest.mark.slow  # trains a model
def test_adapt_moves_the_prevalence_toward_the_new_sites(site_run, kermany_train, tmp_path):
    used = _patients(site_run)
    true = 0.25
    unlabelled = _site_folder(kermany_train, tmp_path / "site", used, 90, 30, labelled=False)
    out = tmp_path / "adapted"
    summary = adapt_run(site_run, unlabelled, out, device="cpu", progress=False)
    before = summary["prevalence_before"]["PNEUMONIA"]
    after = summary["prevalence_after"]["PNEUMONIA"]
    assert before > 0.5  # Kermany's training folder: about 3 in 4 pneumonia
    assert after < before and abs(after - true) < abs(before - true), (before, after)
    assert summary["n_images"] == 120

    # an ordinary run folder: the shift is in the weights, calibration.json belongs to them
    adapted = load_run(out)
    assert load_calibration(out) is not None
    assert json.loads((out / "adapt.json").read_text())["prevalence_after"]["PNEUMONIA"] == after

    # labelled images of the same site: mean probability moves to the prevalence; with
    # --thresholds keep every call (hence accuracy and AUROC) is unchanged
    labelled = _site_folder(kermany_train, tmp_path / "labelled", used, 90, 30, labelled=True)
    both = compare_on_labelled(
        site_run, out, DataConfig(path=str(labelled)), device="cpu", progress=False
    )
    observed = both["before"]["prevalence"]["PNEUMONIA"]
    assert observed == pytest.approx(true)
    gap = {k: abs(both[k]["mean_probability"]["PNEUMONIA"] - observed) for k in both}
    assert gap["after"] < gap["before"], both
    assert both["after"]["nll"] < both["before"]["nll"]
    assert both["after"]["accuracy"] == both["before"]["accuracy"]
    assert both["after"]["mean_auroc"] == pytest.approx(both["before"]["mean_auroc"], abs=1e-9)
    metrics = evaluate_run(out, DataConfig(path=str(labelled)), progress=False, device="cpu")
    original = evaluate_run(site_run, DataConfig(path=str(labelled)), progress=False, device="cpu")
    assert metrics["accuracy"] == original["accuracy"]
    assert adapted.thresholds[1] < load_run(site_run).thresholds[1]  # rarer: lower cut-off

    # bayes thresholds through the command line, with the before/after table
    code = main(
        [
            "adapt",
            "--model",
            str(site_run),
            "--data",
            str(unlabelled),
            "--out",
            str(tmp_path / "bayes"),
            "--thresholds",
            "bayes",
            "--labelled-data",
            str(labelled),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "bayes" / "model.json").read_text())["thresholds"] == {
        "NORMAL": 0.5,
        "PNEUMONIA": 0.5,
    }


@pytest.mark.slow  # trains a model
def test_report_of_an_adapted_run_shows_before_and_after(site_run, kermany_train, tmp_path):
    """`cxr report` on an adapted run with the new site's labelled images (pneumonia 25% where
    the run was validated at about 74%): AUROC unchanged, calibration better, the thresholds
    and calls at both operating points, and the estimated against the observed prevalence."""
    from cxr.report.build import build_report

    used = _patients(site_run)
    unlabelled = _site_folder(kermany_train, tmp_path / "site", used, 90, 30, labelled=False)
    out = tmp_path / "adapted"
    summary = adapt_run(site_run, unlabelled, out, device="cpu", progress=False)
    labelled = _site_folder(kermany_train, tmp_path / "labelled", used, 90, 30, labelled=True)
    report = build_report(
        out,
        DataConfig(path=str(labelled)),
        tmp_path / "report",
        n_boot=20,
        gallery=False,
        progress=False,
        device="cpu",
    )
    a = report["adaptation"]
    assert a["source_run"] == str(Path(site_run).resolve())
    assert a["after"]["mean_auroc"] == pytest.approx(a["before"]["mean_auroc"], abs=1e-9)
    assert a["after"]["nll"] < a["before"]["nll"]
    f = a["findings"]["PNEUMONIA"]
    assert f["prevalence_observed"] == pytest.approx(0.25)
    assert f["prevalence_estimated"] == summary["prevalence_after"]["PNEUMONIA"]
    assert f["prevalence_validation"] > 0.5
    # "keep" thresholds: moved with the shift, so the calls and their rates are the same
    assert f["after"]["threshold"] != f["before"]["threshold"]
    assert f["after"]["sensitivity"] == f["before"]["sensitivity"]
    assert f["after"]["specificity"] == f["before"]["specificity"]
    assert abs(f["mean_probability_after"] - 0.25) < abs(f["mean_probability_before"] - 0.25)
    html = (tmp_path / "report" / "report.html").read_text()
    assert 'id="adaptation"' in html and "observed" in html
    # a run that was not adapted has no such section
    plain = build_report(
        site_run,
        DataConfig(path=str(labelled)),
        tmp_path / "plain",
        n_boot=20,
        gallery=False,
        progress=False,
        device="cpu",
    )
    assert plain["adaptation"] is None
