"""benchmarks/robustness.py's corruptions on a real X-ray: each changes the image, stays in
[0, 1], is reproducible from its seed, and a higher severity changes the image more."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.data.image_io import decode_image

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"
_spec = importlib.util.spec_from_file_location("robustness", _PATH)
robustness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robustness)


@pytest.fixture(scope="module")
def xray(kermany_train) -> np.ndarray:
    image = decode_image(sorted((kermany_train / "PNEUMONIA").iterdir())[0])
    return cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:  # the crop: compare at one size
        b = cv2.resize(b, a.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return float(np.abs(a - b).mean())


@pytest.mark.parametrize("name", list(robustness.CORRUPTIONS))
def test_corruption_changes_more_with_severity(name, xray):
    out = [robustness.corrupt(xray, name, s, seed=3) for s in (1, 2, 3)]
    for o in out:
        assert o.dtype == np.float32 and o.min() >= 0 and o.max() <= 1 and o.ndim == 2
    changes = [_change(xray, o) for o in out]
    assert changes[0] > 1e-3, changes
    assert changes[2] > changes[0], changes  # severity 3 is further from the image than 1
    assert np.array_equal(out[1], robustness.corrupt(xray, name, 2, seed=3))  # reproducible
