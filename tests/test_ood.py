"""The out-of-distribution gate: real validation X-rays pass, and what is plainly not a frontal
chest X-ray (a colour photograph, a hand, a blank frame, an inverted film) is flagged."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_runs import train_kermany_run

from cxr.cli import main
from cxr.data.image_io import to_unit_grey
from cxr.errors import CxrError, NotAChestXray
from cxr.ood.fit import fit_ood_gate, fit_ood_gate_for_run, flag_rate, iter_split_images
from cxr.ood.gate import (
    GATE_FILE,
    OodConfig,
    OodGate,
    colourfulness,
)
from cxr.ood.probes import colour_photo, probe_inputs
from cxr.run import load_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kermany_run(kermany_train, tmp_path_factory) -> Path:
    """A ResNet-18 trained for one epoch on 300 real Kermany images at 64 px."""
    return train_kermany_run(kermany_train, tmp_path_factory.mktemp("ood"), 400, 64)


@pytest.fixture(scope="module")
def gate(kermany_run) -> OodGate:
    return fit_ood_gate_for_run(kermany_run, progress=False)


@pytest.fixture(scope="module")
def val_images(kermany_run) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return list(iter_split_images(load_run(kermany_run), "val"))


# ---------------------------------------------------------------- tests


def test_real_validation_images_mostly_pass(gate, val_images):
    result = flag_rate(gate, val_images, progress=False)
    share = 100 * result["rate"]
    print(
        f"\nfalse refusals on {result['n']} Kermany validation images: {result['flagged']} "
        f"({share:.1f}%), by check {result['by_check']}"
    )
    assert result["n"] >= 80
    # The gate's thresholds are the 99.5th percentile of held-out TRAINING distances, so on
    # validation patients a few percent fail the layout check: 1-5% before splits were
    # stratified per finding (issue 11), 8% (8 of 99) on this 400-image run since.
    assert result["rate"] <= 0.10, result


def test_inputs_that_are_not_chest_xrays_are_flagged(gate, val_images):
    rates = {}
    inverted = [image for image, _ in val_images[:8]]
    for kind, inputs in probe_inputs(inverted, seed=0).items():
        rates[kind] = flag_rate(gate, inputs, progress=False)
    print(
        "\nflagged: "
        + ", ".join(f"{k} {r['flagged']}/{r['n']} {r['by_check']}" for k, r in rates.items())
    )
    for kind, r in rates.items():
        assert r["rate"] == 1.0, (kind, r)
    assert set(rates["colour photograph"]["by_check"]) == {"colour"}
    assert set(rates["blank"]["by_check"]) == {"blank"}


def test_the_reason_names_the_failed_check(gate, val_images):
    image, _ = val_images[0]
    ok = gate.check(image)
    assert ok.ok and ok.threshold == gate.limits["feature_max"] and ok.score <= ok.threshold
    inverted = gate.check(1.0 - image)
    assert not inverted.ok
    failed = [name for name, c in inverted.checks.items() if not c["ok"]]
    assert inverted.score == inverted.checks[failed[0]]["score"]
    assert inverted.checks[failed[0]]["reason"] in inverted.reason


def test_refuse_raises_and_warn_only_flags(kermany_run, gate):
    photo = colour_photo(np.random.default_rng(5))
    image = to_unit_grey(photo, "photo")
    assert gate.config.action == "warn"
    result = gate.enforce(image, photo)
    assert not result.ok and not result.refused
    refusing = OodGate.load(kermany_run, run=gate.run, action="refuse")
    with pytest.raises(NotAChestXray, match="colour"):
        refusing.enforce(image, photo)


def test_gate_saved_in_the_run_folder_loads_with_the_same_verdicts(kermany_run, gate, val_images):
    loaded = OodGate.load(kermany_run)
    assert loaded.limits == gate.limits
    image, raw = val_images[3]
    a, b = gate.check(image, raw), loaded.check(image, raw)
    assert a.ok == b.ok
    assert a.checks["features"]["score"] == pytest.approx(b.checks["features"]["score"], 1e-5)


def test_batched_check_gives_the_per_image_verdicts(gate, val_images):
    """`cxr predict` judges a batch with one forward pass: the same verdicts and scores."""
    from cxr.ood.gate import contrast
    from cxr.preprocess import preprocess

    images = [image for image, _ in val_images[:5]] + [1.0 - val_images[0][0]]
    raws = [raw for _, raw in val_images[:5]] + [None]
    pixels = np.stack([preprocess(im, gate.run.config.preprocess) for im in images])
    single = [gate.check(im, raw) for im, raw in zip(images, raws, strict=True)]
    by_image = [
        gate.check_preprocessed(p, image=im, raw=raw)
        for p, im, raw in zip(pixels, images, raws, strict=True)
    ]
    by_contrast = gate.check_batch(pixels, raws=raws, contrasts=[contrast(im) for im in images])
    assert not single[-1].ok and single[0].ok
    for a, b, c in zip(single, by_image, by_contrast, strict=True):
        assert a.ok == b.ok == c.ok and a.reason == b.reason == c.reason
        for name, check in a.checks.items():
            assert b.checks[name]["score"] == pytest.approx(check["score"], rel=1e-5, abs=1e-9)
            assert c.checks[name]["score"] == pytest.approx(check["score"], rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match="6 images"):
        gate.check_batch(pixels, raws=raws[:2])


def test_colourfulness_is_zero_for_grey_and_high_for_a_photo():
    grey = np.repeat(np.random.default_rng(0).integers(0, 255, (50, 60, 1), np.uint8), 3, axis=2)
    assert colourfulness(grey) == 0.0
    assert colourfulness(grey[..., 0]) == 0.0
    assert colourfulness(colour_photo(np.random.default_rng(1))) > 0.15


def test_missing_gate_or_too_few_images_is_a_named_error(kermany_run, tmp_path):
    with pytest.raises(CxrError, match="ood-fit"):
        OodGate.load(tmp_path)
    pixels = np.zeros((12, 64, 64), np.uint8)
    with pytest.raises(CxrError, match="at least 30"):
        fit_ood_gate(kermany_run, pixels, OodConfig(), progress=False)


def test_cli_ood_fit_then_explain_refuses_a_photograph(kermany_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(kermany_run, run)
    assert main(["ood-fit", "--model", str(run), "--action", "refuse", "--check-limit", "20"]) == 0
    printed = capsys.readouterr().out
    assert "validation images flagged" in printed and (run / GATE_FILE).is_file()
    photo = tmp_path / "holiday.png"
    cv2.imwrite(str(photo), colour_photo(np.random.default_rng(2))[..., ::-1])
    assert main(["explain", str(photo), "--model", str(run), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "colour" in err
    assert not (tmp_path / "o.png").exists()
