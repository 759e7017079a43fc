"""End to end: `cxr serve` with a tiny model trained here, driven in a real headless Chromium.

A person's path through the page (web/e2e/upload.mjs, playwright-core + Debian's chromium) at
desktop and phone sizes: real Kermany X-ray, a 16-bit DICOM, a CT slice and a text file; calls,
viewer, keys, history, errors, and axe-core with zero WCAG 2.2 A/AA violations. Screenshots land
in web/e2e/screenshots (git-ignored). Skipped with a message where node, chromium or
web/node_modules are missing, except in CI (env CI set), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = WEB / "e2e" / "screenshots"  # git-ignored: for a person to look at after a run


def _missing_tools() -> list[str]:
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Node.js 20+)")
    if not Path(CHROMIUM).exists():
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        missing.append("web/node_modules (npm ci in web/)")
    return missing


@pytest.fixture(scope="module")
def tools() -> None:
    missing = _missing_tools()
    if missing:
        message = f"end-to-end browser test needs {', '.join(missing)}: run `bash web/ci.sh`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def web_dist(tools) -> Path:
    dist = WEB / "dist"
    if not (dist / "index.html").is_file():
        build = subprocess.run(
            ["npm", "run", "build"], cwd=WEB, capture_output=True, text=True, timeout=600
        )
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return dist


@pytest.fixture(scope="module")
def tiny_run(tiny_kermany_run, tmp_path_factory) -> Path:
    """A copy of the tiny run whose validation could not estimate NORMAL's AUROC (as NIH's
    Hernia with no validation positives): the page must grey it out and not count it."""
    run = tmp_path_factory.mktemp("web-run") / "run"
    shutil.copytree(tiny_kermany_run, run)
    metrics = json.loads((run / "val_metrics.json").read_text())
    metrics["auroc"]["NORMAL"] = None
    (run / "val_metrics.json").write_text(json.dumps(metrics))
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture()
def server(tiny_run, web_dist, tmp_path):
    """`cxr serve` in a subprocess on a free localhost port; yields its base URL."""
    port = _free_port()
    script = Path(sys.executable).with_name("cxr")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cxr.cli"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            *command,
            "serve",
            "--model",
            str(tiny_run),
            "--port",
            str(port),
            "--web-dir",
            str(web_dist),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180  # importing torch on a busy 2-core machine is slow
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cxr serve exited ({proc.returncode}):\n" + _read(tmp_path))
            try:
                if _get_json(base + "api/health")["status"] == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("cxr serve did not answer /api/health in 180 s:\n" + _read(tmp_path))
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _read(tmp_path: Path) -> str:
    return (tmp_path / "serve.log").read_text()[-4000:]


def test_upload_in_a_real_browser(server, kermany_train, tmp_path):
    """web/e2e/upload.mjs checks every item of the viewer at 1440x900 and 390x844: honest calls,
    zoom/pan, window/level on a 16-bit DICOM (its display image fetched apart from the answer,
    and the 8-bit fallback when it expired), a body-part warning, an identical-map note, keys,
    history after reload, a CT refused, every predict answer under 150 KB, phone layout, and
    axe-core (WCAG 2.2 A/AA) with zero violations in each state."""
    from dicom_files import write_dicom
    from pydicom.data import get_testdata_file

    # A normal child's film: the tiny 1-epoch run calls it confidently (P(NORMAL) ~0.99), so the
    # most probable class has a Grad-CAM map at the 2x2 last layer and the other has none (on
    # pneumonia films this run hovers near 0.4 and both last-layer maps can be empty).
    xray = kermany_train / "NORMAL" / sorted(os.listdir(kermany_train / "NORMAL"))[0]
    text = tmp_path / "notes.txt"
    text.write_text("these are notes, not an X-ray\n")
    pixels = cv2.imread(str(xray), cv2.IMREAD_GRAYSCALE)
    # 12 bits: the real image times 16 plus a ramp, so it holds more than 256 grey levels
    ramp = np.linspace(0, 15, pixels.shape[1], dtype=np.float32)[None, :]
    stored = (pixels.astype(np.float32) * 16 + ramp).astype(np.uint16)
    dicom = write_dicom(
        tmp_path / "chest16.dcm",
        stored,
        ViewPosition="PA",
        BodyPartExamined="CHEST",
        PatientID="SECRET-123",
    )
    ct = write_dicom(tmp_path / "ct.dcm", stored, Modality="CT")
    # a real 1760 x 1760 10-bit CR of another body part (BodyPartExamined EXTREMITY)
    other_part = get_testdata_file("RG3_UNCR.dcm", download=False)
    if other_part is None:
        pytest.skip("RG3_UNCR.dcm is not installed (pip install pydicom-data)")
    shots = SCREENSHOTS
    run = subprocess.run(
        [
            "node",
            "e2e/upload.mjs",
            server,
            str(xray),
            str(text),
            str(dicom),
            str(ct),
            str(other_part),
            str(shots),
        ],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:] + _read(tmp_path)
    assert "e2e: all checks passed" in run.stdout
    for name in (
        "empty.png",
        "desktop.png",
        "side-by-side.png",
        "dicom-window.png",
        "error.png",
        "phone.png",
        "phone-top.png",
        "model-card.png",
    ):
        shot = shots / name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # the bad uploads did not hurt the server
    assert _get_json(server + "api/health")["status"] == "ok"
    assert "Traceback" not in _read(tmp_path)
