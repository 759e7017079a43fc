"""The Flask API against a tiny model trained here on real Kermany images: every endpoint, every
kind of bad upload, real Kermany, NIH and DICOM files, the OpenAPI description, `cxr predict`."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import dicom_bytes

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.cli import main
from cxr.data.image_io import decode_image
from cxr.inference.analysis import Analyser as Engine
from cxr.inference.analysis import heatmap_rgba
from cxr.serve import create_app

pytestmark = pytest.mark.slow


def near_blank() -> np.ndarray:
    """Grey 128 with a faint diagonal: past the decoder's flat-image refusal (a few grey levels),
    still a blank frame to the OOD gate (p99 - p1 = 0)."""
    return np.full((224, 224), 128, np.uint8) + np.eye(224, dtype=np.uint8) * 3


# --- fixtures: one tiny real run, one loaded engine, real files --------------------------------


@pytest.fixture(scope="module")
def run_dir(tiny_kermany_run) -> Path:
    return tiny_kermany_run


@pytest.fixture(scope="module")
def engine(run_dir) -> Engine:
    return Engine({"model": str(run_dir)})


def make_client(engine, **cfg):
    return create_app({"model": str(engine.run_dir), **cfg}, engine=engine).test_client()


@pytest.fixture()
def client(engine):
    return make_client(engine)


@pytest.fixture(scope="module")
def kermany_jpeg(kermany_train) -> Path:
    return kermany_train / "NORMAL" / "IM-0115-0001.jpeg"  # 224 x 224, grey stored as RGB


@pytest.fixture(scope="module")
def nih_png(nih_samples) -> Path:
    return nih_samples / "images" / "00000001_000.png"  # 512 x 512 grey


@pytest.fixture(scope="module")
def nih_pixels(nih_png) -> np.ndarray:
    return cv2.imread(str(nih_png), cv2.IMREAD_GRAYSCALE)


def upload(client, data: bytes, name: str, url: str = "/api/predict", **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.post(
        url + (f"?{query}" if query else ""), data={"file": (io.BytesIO(data), name)}
    )


def png_bytes(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def png_header_only(side: int) -> bytes:
    """A PNG that claims side x side pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def decode_data_url(url: str, kind: str = "png") -> np.ndarray:
    head, _, body = url.partition(",")
    assert head == f"data:image/{kind};base64"
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(body), np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels


def fetch_display(client, body: dict) -> np.ndarray:
    """The lossless display image a predict answer points to (GET image.display.url)."""
    display = body["image"]["display"]
    response = client.get(display["url"])
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert "no-store" in response.headers["Cache-Control"]
    assert len(response.data) == display["bytes"]
    pixels = cv2.imdecode(np.frombuffer(response.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == (display["height"], display["width"])
    assert pixels.dtype == (np.uint16 if display["depth"] == 16 else np.uint8)
    return pixels


def validator(spec: dict, schema_name: str):
    from jsonschema import Draft202012Validator

    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def spec(engine) -> dict:
    return make_client(engine).get("/api/openapi.json").get_json()


def assert_schema(spec: dict, name: str, body: dict) -> None:
    errors = sorted(validator(spec, name).iter_errors(body), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def assert_well_formed(body: dict, engine: Engine, spec: dict) -> None:
    assert_schema(spec, "Prediction", body)
    probs = [f["probability"] for f in body["findings"]]
    assert probs == sorted(probs, reverse=True)
    assert sorted(f["finding"] for f in body["findings"]) == sorted(engine.findings)
    thresholds = engine.info["thresholds"]
    for f in body["findings"]:
        assert f["threshold"] == pytest.approx(thresholds[f["finding"]])
    called = [f["finding"] for f in body["findings"] if f["positive"]]
    if engine.predictor.run.task == "multiclass":
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        # one decision rule (issue 11): exactly one class is called, and it is top_finding,
        # even when the other class is more probable (a threshold away from 0.5)
        assert called == [body["top_finding"]]
        rule = engine.info["decision"]
        p = {f["finding"]: f["probability"] for f in body["findings"]}
        assert (body["top_finding"] == rule["positive_class"]) == (
            p[rule["positive_class"]] >= rule["threshold"]
        )
        assert body["decision"] == rule["text"]
    else:
        assert body["top_finding"] == body["findings"][0]["finding"]
        for f in body["findings"]:
            assert f["positive"] == (f["probability"] >= f["threshold"])
    assert body["notice"] == NOT_A_MEDICAL_DEVICE
    assert body["seconds"] > 0 and body["timing"]["total"] == pytest.approx(body["seconds"])


# --- health, model, OpenAPI ---------------------------------------------------------------------


def test_health_and_model_answer_without_running_the_model(engine, run_dir, spec, monkeypatch):
    def broken(*args, **kwargs):
        raise AssertionError("the model must not run for /api/health or /api/model")

    monkeypatch.setattr(engine.predictor, "predict", broken)
    monkeypatch.setattr(engine.predictor, "predict_with_features", broken)
    monkeypatch.setattr(engine.predictor.model, "forward", broken)
    client = make_client(engine)
    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.get_json()["status"] == "ok"
    assert_schema(spec, "Health", health.get_json())

    info = client.get("/api/model").get_json()
    assert_schema(spec, "ModelInfo", info)
    saved = json.loads((run_dir / "model.json").read_text())
    val = json.loads((run_dir / "val_metrics.json").read_text())
    assert info["findings"] == saved["findings"] == ["NORMAL", "PNEUMONIA"]
    assert info["image_size"] == 48 and info["arch"] == "resnet18"
    assert info["training_data"]["n_train"] == saved["training_data"]["n_train"]
    assert info["metrics"]["validation"]["mean_auroc"] == pytest.approx(val["mean_auroc"])
    assert info["metrics"]["validation"]["n_images"] == val["n_images"]
    assert "diagnosis" in info["model_card"]["not_for"].lower()
    assert info["notice"] == NOT_A_MEDICAL_DEVICE


def test_openapi_spec_is_valid_and_names_every_route(engine, spec):
    from openapi_spec_validator import validate

    validate(spec)
    app = create_app({"model": str(engine.run_dir)}, engine=engine)
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())  # <x> -> {x}
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, m) for path, ops in spec["paths"].items() for m in ops}
    assert routes == documented
    assert "NORMAL" in json.dumps(spec["paths"]["/api/predict"])  # the served findings


# --- real images ----------------------------------------------------------------------------------


def test_predict_real_kermany_jpeg(client, engine, spec, kermany_jpeg):
    response = upload(client, kermany_jpeg.read_bytes(), kermany_jpeg.name)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert_well_formed(body, engine, spec)
    assert body["file"] == kermany_jpeg.name
    assert (body["image"]["width"], body["image"]["height"]) == (224, 224)
    preview = decode_data_url(body["image"]["original"], "jpeg")  # small, lossy, inline
    shown = fetch_display(client, body)  # lossless, fetched separately
    assert preview.shape == shown.shape == (224, 224) and body["image"]["display"]["depth"] == 8
    np.testing.assert_array_equal(shown, cv2.imread(str(kermany_jpeg), cv2.IMREAD_GRAYSCALE))
    assert np.abs(preview.astype(int) - shown).mean() < 3
    model_view = decode_data_url(body["image"]["preprocessed"])  # small: lossless PNG
    assert model_view.shape == (48, 48)  # the run's image size: what the model saw
    expected = engine.predictor.predict(decode_image(kermany_jpeg))
    np.testing.assert_array_equal(model_view, expected.preprocessed)
    by_name = {f["finding"]: f["probability"] for f in body["findings"]}
    for name, p in zip(expected.findings, expected.probabilities, strict=True):
        assert by_name[name] == pytest.approx(p, abs=1e-6)  # the API and the Predictor agree


def test_predict_real_nih_png_with_heatmaps_for_every_finding(client, engine, spec, nih_png):
    body = upload(client, nih_png.read_bytes(), nih_png.name, heatmaps="all").get_json()
    assert_well_formed(body, engine, spec)
    assert (body["image"]["width"], body["image"]["height"]) == (512, 512)
    assert sorted(body["heatmaps"]) == sorted(engine.findings)
    maps = [decode_data_url(url) for url in body["heatmaps"].values()]
    # 4 px per cell of the 2 x 2 Grad-CAM grid, at least 64: the browser stretches it
    assert all(m.shape == (64, 64, 4) for m in maps)
    # Grad-CAM of a two-class softmax: positive evidence for one class is negative for the
    # other, whose map is then empty (all transparent); the most probable finding's map is not
    # (the called class, top_finding, can be the less probable one under the decision rule).
    top = decode_data_url(body["heatmaps"][body["findings"][0]["finding"]])
    assert top[..., 3].max() == 255 and top[..., 3].min() < 255
    assert body["warnings"] == []


def test_heatmaps_for_the_findings_asked_for(client, engine, kermany_jpeg):
    data = kermany_jpeg.read_bytes()
    body = upload(client, data, "a.jpeg", heatmaps="NORMAL").get_json()
    assert list(body["heatmaps"]) == ["NORMAL"]
    body = upload(client, data, "a.jpeg", heatmaps="none", images="false").get_json()
    assert body["heatmaps"] == {} and "original" not in body["image"]
    body = upload(client, data, "a.jpeg").get_json()  # auto: the top finding and the positives
    expected = {body["top_finding"]} | {f["finding"] for f in body["findings"] if f["positive"]}
    assert set(body["heatmaps"]) == expected
    body = upload(client, data, "a.jpeg", heatmaps="top", overlays="true").get_json()
    assert decode_data_url(body["overlays"][body["top_finding"]]).shape == (224, 224, 3)


def test_predict_dicom_built_from_a_real_image(client, engine, spec, nih_pixels):
    stored = (nih_pixels.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    body = upload(client, dicom_bytes(stored), "chest.dcm", heatmaps="none").get_json()
    assert_well_formed(body, engine, spec)
    assert (body["image"]["width"], body["image"]["height"]) == (512, 512)
    # the browser gets a PNG of the DICOM: no DICOM decoder is needed client-side
    original = decode_data_url(body["image"]["original"], "jpeg").astype(np.int16)
    assert np.abs(original - nih_pixels).mean() < 3
    np.testing.assert_array_equal(fetch_display(client, body), nih_pixels)


def test_big_16_bit_image_is_shown_at_display_size(engine, nih_pixels):
    big = cv2.resize(nih_pixels, (2048, 2048), interpolation=cv2.INTER_LINEAR).astype(np.uint16)
    client = make_client(engine, display_size=1024)
    body = upload(client, png_bytes(big * 257), "big16.png", heatmaps="none").get_json()
    assert (body["image"]["width"], body["image"]["height"]) == (2048, 2048)
    assert decode_data_url(body["image"]["original"], "jpeg").shape == (768, 768)
    assert fetch_display(client, body).shape == (1024, 1024)


def test_raw_body_upload(client, kermany_jpeg):
    response = client.post(
        "/api/predict?filename=x.jpeg", data=kermany_jpeg.read_bytes(), content_type="image/jpeg"
    )
    assert response.status_code == 200
    assert response.get_json()["file"] == "x.jpeg"


# --- bad input: a clear 4xx JSON error, and the server keeps serving -----------------------------


def truncated_dicom(nih_pixels) -> bytes:
    data = dicom_bytes(nih_pixels.astype(np.uint16))
    return data[: len(data) - nih_pixels.size]  # pixel data cut in half


BAD_UPLOADS = {
    "text file": (
        lambda px: b"just some notes\n" * 20,
        "notes.txt",
        422,
        "unreadable_image",
        "not a readable image",
    ),
    "text named png": (
        lambda px: b"hello",
        "scan.png",
        422,
        "unreadable_image",
        "not a readable image",
    ),
    "empty file": (lambda px: b"", "empty.png", 422, "unreadable_image", "empty file"),
    "truncated png": (
        lambda px: png_bytes(px)[:3000],
        "cut.png",
        422,
        "unreadable_image",
        "cut.png",
    ),
    "corrupt dicom": (truncated_dicom, "cut.dcm", 422, "unreadable_image", "DICOM"),
    "dicom without pixels": (
        lambda px: dicom_bytes(px, pixels=False),
        "nopix.dcm",
        422,
        "unreadable_image",
        "no pixel data",
    ),
    "decompression bomb": (
        lambda px: png_header_only(100_000),
        "bomb.png",
        413,
        "too_many_pixels",
        "refused",
    ),
    "over the pixel limit": (
        lambda px: png_bytes(np.zeros((2100, 2100), np.uint8)),
        "huge.png",
        413,
        "too_many_pixels",
        "limit",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_gets_a_clear_json_error(engine, nih_pixels, kermany_jpeg, case):
    make, name, status, code, words = BAD_UPLOADS[case]
    client = make_client(engine, max_pixels=4_000_000)
    response = upload(client, make(nih_pixels), name)
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["code"] == code and body["status"] == status
    assert words.lower() in body["error"].lower()
    if status == 422:
        assert name in body["error"]  # the message names the file
    # ... and the server goes on serving
    assert client.get("/api/health").status_code == 200
    assert upload(client, kermany_jpeg.read_bytes(), "ok.jpeg").status_code == 200


def test_upload_over_the_size_limit(engine, nih_pixels):
    client = make_client(engine, max_upload_mb=0.25)
    noise = np.random.default_rng(0).integers(0, 255, (700, 700), dtype=np.uint8)  # ~490 KB PNG
    response = upload(client, png_bytes(noise), "big.png")
    assert response.status_code == 413
    body = response.get_json()
    assert body["code"] == "too_large" and "0.25 MB" in body["error"]
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_colour_photograph_is_refused(client, photo):
    from skimage import data

    rgb = getattr(data, photo)()
    ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1])
    response = upload(client, jpeg.tobytes(), f"{photo}.jpg")
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "not_a_chest_xray"
    assert "colour photograph" in body["error"] and f"{photo}.jpg" in body["error"]


def test_grey_version_of_a_photo_passes_the_colour_check(client):
    from skimage import data

    grey = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    assert upload(client, png_bytes(np.dstack([grey] * 3)), "grey.png").status_code == 200


@pytest.mark.parametrize(
    "ok, action, status",
    [(False, "refuse", 422), (False, "warn", 200), (True, "refuse", 200)],
)
def test_ood_gate_verdicts(engine, kermany_jpeg, monkeypatch, ok, action, status):
    from cxr.ood import OodResult

    def Verdict():  # noqa: N802 - a verdict as the gate returns it, with these numbers
        return OodResult(ok=ok, score=9.5, threshold=3.0, reason="far from training", action=action)

    class Gate:
        seen: list = []

        def check_preprocessed(self, pixels, image=None, raw=None, features=None):
            self.seen.append((pixels.shape, image.shape, raw is None, np.shape(features)))
            return Verdict()

    gate = Gate()
    monkeypatch.setattr(engine, "gate", gate)
    response = upload(make_client(engine), kermany_jpeg.read_bytes(), "x.jpeg")
    assert response.status_code == status
    # the gate saw the model's input, the decoded image, the colour pixels of this RGB-stored
    # JPEG, and the pooled features of the prediction's own forward pass (ResNet-18: 512)
    assert gate.seen == [((48, 48), (224, 224), False, (1, 512))]
    body = response.get_json()
    assert body["ood"] == {
        "checked": True,
        "ok": ok,
        "score": 9.5,
        "threshold": 3.0,
        "reason": "far from training",
        "action": action,
    }
    if status == 422:
        assert body["code"] == "not_a_chest_xray" and "far from training" in body["error"]
    elif not ok:
        assert "Out-of-distribution warning" in body["warnings"][0]
    else:
        assert body["warnings"] == [] or "Grad-CAM" in body["warnings"][0]


def test_real_ood_gate_fitted_on_the_run(run_dir, kermany_jpeg, tmp_path):
    import shutil

    from cxr.ood import gate as ood

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    from cxr.ood.fit import fit_ood_gate_for_run

    fit_ood_gate_for_run(copy, ood.OodConfig(action="refuse"), progress=False)
    client = make_client(Engine({"model": str(copy)}))
    info = client.get("/api/model").get_json()
    assert info["ood_gate"]["enabled"] and "refuse" in info["ood_gate"]["note"]
    xray = kermany_jpeg.read_bytes()
    body = upload(client, xray, "x.jpeg").get_json()
    assert body["ood"]["checked"] is True and body["ood"]["ok"] is True, body["ood"]
    blank = png_bytes(near_blank())
    response = upload(client, blank, "grey.png")
    assert response.status_code == 422
    assert response.get_json()["ood"]["checks"]["blank"]["ok"] is False


@pytest.mark.parametrize(
    "query, words",
    [("heatmaps=LUNG", "unknown finding"), ("images=maybe", "images='maybe'")],
)
def test_bad_parameters_are_400(client, kermany_jpeg, query, words):
    response = client.post(
        f"/api/predict?{query}", data={"file": (io.BytesIO(kermany_jpeg.read_bytes()), "x.jpeg")}
    )
    assert response.status_code == 400
    assert words in response.get_json()["error"]


def test_no_file_or_wrong_field_is_400(client, kermany_jpeg):
    response = client.post("/api/predict")
    assert response.status_code == 400 and "no image uploaded" in response.get_json()["error"]
    response = client.post("/api/predict", data={"image": (io.BytesIO(b"x"), "x.png")})
    assert response.status_code == 400 and "'file'" in response.get_json()["error"]


def test_unexpected_failure_is_a_500_json_and_the_server_recovers(
    engine, kermany_jpeg, monkeypatch
):
    client = make_client(engine)
    real = engine.predictor.engine.predict_with_features
    monkeypatch.setattr(engine.predictor.engine, "predict_with_features", lambda pixels: 1 / 0)
    response = upload(client, kermany_jpeg.read_bytes(), "x.jpeg")
    assert response.status_code == 500
    assert response.get_json()["code"] == "internal_error"
    monkeypatch.setattr(engine.predictor.engine, "predict_with_features", real)
    assert upload(client, kermany_jpeg.read_bytes(), "x.jpeg").status_code == 200


def test_unknown_api_path_and_method_are_json(client):
    response = client.get("/api/nothing")
    assert response.status_code == 404 and "openapi" in response.get_json()["error"]
    response = client.get("/api/predict")
    assert response.status_code == 405 and response.get_json()["code"] == "method_not_allowed"


# --- uploads stay in memory ----------------------------------------------------------------------


def test_uploads_never_touch_the_disk(engine, nih_pixels, tmp_path, monkeypatch):
    import tempfile

    import werkzeug.formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to disk")

    for module, name in [
        (werkzeug.formparser, "SpooledTemporaryFile"),
        (tempfile, "SpooledTemporaryFile"),
        (tempfile, "TemporaryFile"),
        (tempfile, "NamedTemporaryFile"),
        (tempfile, "mkstemp"),
    ]:
        monkeypatch.setattr(module, name, no_disk)
    big = cv2.resize(nih_pixels, (1400, 1400)).astype(np.uint16) * 257
    data = png_bytes(big)
    assert len(data) > 600_000  # well over Werkzeug's 500 KB in-memory default
    client = make_client(engine)
    assert upload(client, data, "big.png", heatmaps="none").status_code == 200

    saved = tmp_path / "kept"
    client = make_client(engine, save_uploads=str(saved))
    assert upload(client, data, "../../etc/big.png", heatmaps="none").status_code == 200
    kept = list(saved.iterdir())
    assert len(kept) == 1 and kept[0].name.endswith("big.png") and kept[0].read_bytes() == data


# --- batch endpoint ------------------------------------------------------------------------------


def test_batch_answers_each_file_and_reports_bad_ones(client, spec, kermany_jpeg, nih_png):
    files = [
        (io.BytesIO(kermany_jpeg.read_bytes()), "k.jpeg"),
        (io.BytesIO(b"not an image"), "notes.txt"),
        (io.BytesIO(nih_png.read_bytes()), "n.png"),
    ]
    response = client.post("/api/predict/batch", data={"files": files})
    assert response.status_code == 200
    body = response.get_json()
    assert_schema(spec, "BatchResult", body)
    assert [r["file"] for r in body["results"]] == ["k.jpeg", "notes.txt", "n.png"]
    assert (body["n_ok"], body["n_failed"]) == (2, 1)
    assert body["results"][1]["status"] == 422 and "notes.txt" in body["results"][1]["error"]
    assert "original" not in body["results"][0]["image"]  # light by default


def test_batch_over_the_file_limit_is_400(engine, kermany_jpeg):
    client = make_client(engine, max_batch_files=2)
    files = [(io.BytesIO(kermany_jpeg.read_bytes()), f"{i}.jpeg") for i in range(3)]
    response = client.post("/api/predict/batch", data={"files": files})
    assert response.status_code == 400 and "limit of 2" in response.get_json()["error"]


# --- the front end is served from the same origin -------------------------------------------------


def test_front_end_is_served_with_client_side_routes(engine, tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><div id=root></div>")
    (tmp_path / "assets" / "app.js").write_text("console.log(1)")
    client = make_client(engine, web_dir=str(tmp_path))
    assert b"id=root" in client.get("/").data
    assert client.get("/assets/app.js").data == b"console.log(1)"
    assert b"id=root" in client.get("/some/page").data  # the app's own routing
    assert client.get("/api/nope").status_code == 404
    headers = client.get("/").headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "img-src 'self' data:" in headers["Content-Security-Policy"]


def test_front_end_assets_are_gzipped_and_cached_by_hash(engine, tmp_path):
    import gzip

    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><div id=root></div>")
    script = "const findings = [];\n" * 500
    (tmp_path / "assets" / "index-abc123.js").write_text(script)
    client = make_client(engine, web_dir=str(tmp_path))
    asset = client.get("/assets/index-abc123.js", headers={"Accept-Encoding": "gzip, br"})
    assert asset.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(asset.data).decode() == script
    assert len(asset.data) < len(script) / 10
    assert "immutable" in asset.headers["Cache-Control"]
    assert "max-age=31536000" in asset.headers["Cache-Control"]
    assert "Accept-Encoding" in asset.headers["Vary"]
    plain = client.get("/assets/index-abc123.js")  # a client that cannot gunzip
    assert "Content-Encoding" not in plain.headers and plain.data.decode() == script
    page = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert "no-cache" in page.headers["Cache-Control"]
    assert b"id=root" in gzip.decompress(page.data)


def test_unbuilt_front_end_says_how_to_build_it(engine, tmp_path):
    page = make_client(engine, web_dir=str(tmp_path / "none")).get("/")
    assert page.status_code == 200 and b"web/ci.sh" in page.data


def test_heatmap_colours_follow_the_map():
    rgba = heatmap_rgba(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert rgba.shape == (1, 3, 4)
    assert rgba[0, 0, 3] == 0 and rgba[0, 2, 3] == 255  # cold areas transparent
    assert rgba[0, 2, 0] > rgba[0, 2, 2]  # hot is red, not blue


# --- `cxr predict FOLDER` ------------------------------------------------------------------------


def test_cli_predict_folder_writes_a_csv_and_never_overwrites(
    run_dir, kermany_train, nih_png, tmp_path, capsys
):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for p in sorted((kermany_train / "PNEUMONIA").iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "sub" / nih_png.name).write_bytes(nih_png.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "readme.txt").write_text("not an image: listed as skipped, with why")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(folder), "--model", str(run_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    by_file = {r["file"]: r for r in rows}
    assert by_file["readme.txt"]["status"] == "skipped"
    assert "not an image" in by_file["readme.txt"]["error"]
    assert by_file["broken.png"]["status"] == "error"
    assert "broken.png" in by_file["broken.png"]["error"]
    good = by_file[f"sub/{nih_png.name}"]
    assert good["status"] == "ok" and good["top_finding"] in ("NORMAL", "PNEUMONIA")
    p = float(good["NORMAL_probability"]) + float(good["PNEUMONIA_probability"])
    assert p == pytest.approx(1.0, abs=1e-5)
    printed = capsys.readouterr().out
    assert "4 image(s) predicted, 1 could not be used, 1 file(s) skipped" in printed
    assert NOT_A_MEDICAL_DEVICE in printed

    before = out.read_bytes()
    assert main(["predict", str(folder), "--model", str(run_dir), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert (
        main(["predict", str(folder), "--model", str(run_dir), "--out", str(out), "--force"]) == 0
    )


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_predict_rows_agree_with_the_api_and_the_gate_refuses_in_batches(
    run_dir, kermany_train, nih_png, tmp_path, capsys, backend
):
    """Batched `cxr predict` (worker threads, batches of 3, the gate on whole batches, with the
    features of the prediction's own forward pass on PyTorch) gives each file the
    probabilities and OOD verdict that POST /api/predict gives it."""
    import shutil

    from cxr.inference.export import export_run
    from cxr.ood.fit import fit_ood_gate_for_run
    from cxr.ood.gate import OodConfig

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    fit_ood_gate_for_run(run, OodConfig(action="refuse"), progress=False)
    if backend == "onnx":
        export_run(run)
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((kermany_train / "NORMAL").iterdir())[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / nih_png.name).write_bytes(nih_png.read_bytes())
    (folder / "blank.png").write_bytes(png_bytes(near_blank()))
    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                str(folder),
                "--model",
                str(run),
                "--out",
                str(out),
                "--batch-size",
                "3",
                "--workers",
                "2",
                "--backend",
                backend,
            ]
        )
        == 0
    )
    assert "images/s" in capsys.readouterr().out
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 6
    assert rows["blank.png"]["status"] == "error"
    assert "out-of-distribution" in rows["blank.png"]["error"]
    assert float(rows["blank.png"]["ood_score"]) >= 0

    client = make_client(Engine({"model": str(run)}))
    for name, row in rows.items():
        response = upload(client, (folder / name).read_bytes(), name, heatmaps="none")
        body = response.get_json()
        if row["status"] == "error":
            assert response.status_code == 422 and body["ood"]["ok"] is False
            continue
        assert row["status"] == "ok" and body["top_finding"] == row["top_finding"]
        assert float(row["ood_score"]) == pytest.approx(body["ood"]["score"], rel=1e-4)
        for f in body["findings"]:
            assert float(row[f"{f['finding']}_probability"]) == pytest.approx(
                f["probability"], abs=1e-5
            )
            assert int(row[f"{f['finding']}_positive"]) == int(f["positive"])


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--workers", "0")])
def test_cli_predict_bad_batch_settings_are_named(
    run_dir, kermany_jpeg, tmp_path, capsys, flag, value
):
    out = tmp_path / "p.csv"
    assert (
        main(
            ["predict", str(kermany_jpeg), "--model", str(run_dir), "--out", str(out), flag, value]
        )
        == 2
    )
    assert flag in capsys.readouterr().err and not out.exists()


def test_cli_predict_empty_folder_is_a_clear_error(run_dir, tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--model", str(run_dir)]) == 2
    assert "no image files found" in capsys.readouterr().err


def test_cli_serve_with_a_bad_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err


# --- honest calls, DICOM header, full-depth preview (web viewer, issue 15) -----------------------


def test_calls_carry_the_borderline_band_margin_and_reliability(client, engine, kermany_jpeg):
    from cxr.inference.borderline import grade

    bands = engine.info["operating_points"]
    assert set(bands) == set(engine.findings)
    for finding, band in bands.items():
        assert band["low"] <= band["threshold"] <= band["high"]
        assert band["reliable"] == (band["auroc"] is not None and band["auroc"] > 0.6)
        assert band["band_source"].startswith("validation"), (finding, band)
    body = upload(client, kermany_jpeg.read_bytes(), "a.jpeg", heatmaps="none").get_json()
    for f in body["findings"]:
        low, high = f["band"]
        expected = (
            "positive"
            if f["probability"] >= high
            else ("possible" if f["probability"] >= low else "negative")
        )
        assert f["call"] == expected
        assert f["margin"] == pytest.approx(f["probability"] - f["threshold"])
    # a score inside a real band is "possible", however the rounding looks
    band = {"threshold": 0.5, "low": 0.4, "high": 0.6, "auroc": 0.55, "reliable": False}
    assert grade({"probability": 0.5004}, band)["call"] == "possible"
    assert grade({"probability": 0.61}, band)["call"] == "positive"
    assert grade({"probability": 0.39}, band)["call"] == "negative"


def test_band_is_withheld_when_the_served_threshold_differs_from_validation():
    from cxr.inference.borderline import finding_bands

    metrics = {
        "auroc": {"A": 0.9},
        "per_finding": {
            "A": {
                "threshold": 0.3,
                "threshold_sensitivity_95": 0.1,
                "threshold_specificity_95": 0.6,
            }
        },
    }
    assert finding_bands(metrics, {"A": 0.3})["A"]["low"] == 0.1
    recalibrated = finding_bands(metrics, {"A": 0.45})["A"]
    assert recalibrated["low"] == recalibrated["high"] == 0.45
    assert "differs" in recalibrated["band_source"]
    missing = finding_bands(None, {"A": 0.45})["A"]
    assert missing["reliable"] is False and missing["auroc"] is None


@pytest.mark.parametrize(("modality", "part"), [("CT", "CHEST"), ("MR", "CHEST"), ("US", "")])
def test_cross_sectional_dicom_is_refused(client, nih_pixels, modality, part):
    stored = nih_pixels.astype(np.uint16) * 16
    data = dicom_bytes(stored, Modality=modality, BodyPartExamined=part)
    response = upload(client, data, "slice.dcm")
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "not_a_chest_xray" and f"Modality {modality}" in body["error"]


def test_dicom_header_is_returned_without_identifiers_and_other_body_parts_warned(
    client, nih_pixels
):
    # 12 bits: the real image times 16 plus a ramp, so it holds more than 256 grey levels
    ramp = np.linspace(0, 15, nih_pixels.shape[1], dtype=np.float32)[None, :]
    stored = (nih_pixels.astype(np.float32) * 16 + ramp).astype(np.uint16)
    data = dicom_bytes(
        stored,
        BodyPartExamined="KNEE",
        PatientName="Doe^Jane",
        PatientID="SECRET-123",
        ViewPosition="PA",
    )
    response = upload(client, data, "knee.dcm", heatmaps="none", depth="16")
    assert response.status_code == 200
    body = response.get_json()
    header = body["dicom"]
    assert header["modality"] == "CR" and header["body_part"] == "KNEE"
    assert (header["rows"], header["columns"], header["bits_stored"]) == (512, 512, 12)
    assert header["photometric_interpretation"] == "MONOCHROME2"
    assert header["view_position"] == "PA"
    assert header["transfer_syntax"] == "Explicit VR Little Endian"
    assert "SECRET-123" not in json.dumps(body) and "Doe^Jane" not in json.dumps(body)
    assert any("KNEE" in w for w in body["warnings"])
    # depth=16: the display image, fetched separately, keeps more than 256 grey levels
    original = fetch_display(client, body)
    assert original.dtype == np.uint16 and body["image"]["depth"] == 16
    assert len(np.unique(original)) > 256


def test_heatmap_grid_layer_and_notes(client, engine, kermany_jpeg):
    pytest.importorskip("cxr.explain")
    data = kermany_jpeg.read_bytes()
    body = upload(client, data, "a.jpeg", heatmaps="all").get_json()
    assert body["heatmap_layer"] == "last" and body["heatmap_grid"] == 2  # 48 px / 32
    fine = upload(client, data, "a.jpeg", heatmaps="all", heatmap_layer="finer").get_json()
    assert fine["heatmap_layer"] == "finer" and fine["heatmap_grid"] == 3
    # a two-class softmax: the less probable class's map is empty, and the note says so (the
    # less probable class, not "not top_finding": the called class can be the less probable one
    # under the run's decision rule, whose threshold need not be 0.5)
    other = body["findings"][-1]["finding"]
    assert body["heatmap_notes"].get(other, "").startswith("empty")
    assert upload(client, data, "a.jpeg", depth="12").status_code == 400


def test_heatmap_notes_name_empty_and_identical_maps():
    from cxr.inference.analysis import heatmap_notes

    blob = np.zeros((8, 8), np.float32)
    blob[2:5, 3:6] = 1.0
    other = np.roll(blob, 3, axis=0)
    notes = heatmap_notes(
        {"A": blob, "B": np.zeros((8, 8), np.float32), "C": blob.copy(), "D": other}
    )
    assert notes == {
        "B": "empty: Grad-CAM found no positive evidence for this finding",
        "C": "identical to the map for A",
    }


# --- small answers: the lossless display image is fetched separately (issue 15) -----------------

PREDICT_BUDGET = 150_000  # bytes of one predict answer, default heatmaps, whatever the image size


@pytest.fixture(scope="module")
def big_uploads(nih_pixels, tmp_path_factory) -> dict[str, Path]:
    """3000 x 3000 uploads made from the real 512 px NIH film: a 16-bit PNG and a 12-bit DICOM
    (with the film's noise kept, so they compress like a real large radiograph), and a real
    1955 x 1841 15-bit chest CR DICOM from pydicom-data."""
    from pydicom.data import get_testdata_file

    real = get_testdata_file("RG1_UNCR.dcm", download=False)
    if real is None:
        pytest.skip("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    real = Path(real)
    folder = tmp_path_factory.mktemp("big")
    up = cv2.resize(nih_pixels, (3000, 3000), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    grain = np.random.default_rng(0).normal(0.0, 0.15, up.shape)  # sub-grey-level detail
    png16 = np.clip((up + grain) * 257, 0, 65535).astype(np.uint16)
    (folder / "big16.png").write_bytes(png_bytes(png16))
    dcm12 = np.clip((up + grain) * 16, 0, 4095).astype(np.uint16)
    (folder / "big12.dcm").write_bytes(dicom_bytes(dcm12, BodyPartExamined="CHEST"))
    return {
        "big16.png": folder / "big16.png",
        "big12.dcm": folder / "big12.dcm",
        "RG1_UNCR.dcm": real,
    }


@pytest.mark.parametrize("name", ["big16.png", "big12.dcm", "RG1_UNCR.dcm"])
def test_predict_answer_for_a_large_image_is_small_and_the_viewer_gets_full_depth(
    client, engine, spec, big_uploads, name
):
    path = big_uploads[name]
    response = upload(client, path.read_bytes(), name, depth="16")  # what the web page sends
    assert response.status_code == 200, response.get_json()
    print(f"{name}: predict answer {len(response.data)} bytes")
    assert len(response.data) < PREDICT_BUDGET, f"{name}: {len(response.data)} bytes"
    body = response.get_json()
    assert_well_formed(body, engine, spec)
    expected = {body["top_finding"]} | {f["finding"] for f in body["findings"] if f["positive"]}
    assert set(body["heatmaps"]) == expected  # the default heatmaps are all there
    image = body["image"]
    assert max(image["width"], image["height"]) >= 1955
    preview = decode_data_url(image["original"], "jpeg")
    assert max(preview.shape) == 768  # the inline preview: first paint, list, history
    shown = fetch_display(client, body)  # what the viewer windows: 16 bits at 1024 px
    assert max(shown.shape) == 1024 and image["depth"] == 16
    assert len(np.unique(shown)) > 1024, "window/level needs the file's depth, not 8 bits"
    assert image["display_width"] == shown.shape[1]


def test_display_images_expire_are_bounded_and_unguessable(client, kermany_jpeg):
    from cxr.serve.display_cache import DisplayCache

    body = upload(client, kermany_jpeg.read_bytes(), "a.jpeg", heatmaps="none").get_json()
    again = upload(client, kermany_jpeg.read_bytes(), "a.jpeg", heatmaps="none").get_json()
    url = body["image"]["display"]["url"]
    assert url != again["image"]["display"]["url"]  # a fresh id for each answer
    assert len(url.rsplit("/", 1)[1]) >= 32
    unknown = client.get(url[:-4] + "AAAA")
    assert unknown.status_code == 404 and unknown.get_json()["code"] == "display_expired"
    assert "analyse the file again" in unknown.get_json()["error"]
    # the cache itself: by time, by bytes, by entries; an image over the whole bound is not held
    cache = DisplayCache(max_bytes=1000, max_entries=4, ttl_s=0.3)
    a = cache.put(b"x" * 600)
    b = cache.put(b"y" * 600)  # 1200 bytes > 1000: the older one goes
    assert cache.get(a) is None and cache.get(b) == b"y" * 600
    tokens = [cache.put(b"z") for _ in range(6)]  # each counts at least 1000 / 4 bytes
    assert len(cache) == 4 and [cache.get(t) for t in tokens[:2]] == [None, None]
    assert cache.put(b"w" * 1001) is None
    time.sleep(0.4)
    assert len(cache) == 0 and cache.get(tokens[-1]) is None


# --- the model card: intervals, positives, and no server path (issue 15) -------------------------


def _strings(value, where: str = ""):
    """Every (JSON path, string) in a JSON value, keys included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{where}.{k} (key)", k
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


# an absolute POSIX or Windows path, or one from the home directory, anywhere in a string
_ABSOLUTE = re.compile(r"(?:^|[\s\"'=(,:;])(?:/(?!api/)[\w.~-]+/|~/|[A-Za-z]:[\\/])")


def test_model_info_has_no_server_path_anywhere(run_dir, tmp_path):
    """A run with everything that records paths (data folder, cache dir, an OOD gate fitted from
    it, calibration) served from a folder under the home directory's name: no path leaks."""
    import shutil

    from cxr.calibration import calibrate_run
    from cxr.ood import gate as ood
    from cxr.ood.fit import fit_ood_gate_for_run

    run = tmp_path / "served-run"
    shutil.copytree(run_dir, run)
    fit_ood_gate_for_run(run, ood.OodConfig(action="warn"), progress=False)
    calibrate_run(run, progress=False, device="cpu")
    client = make_client(Engine({"model": str(run)}))
    info = client.get("/api/model").get_json()
    assert info["ood_gate"]["enabled"] and info["calibration"] is not None
    text = json.dumps(info)
    home = str(Path.home())
    for secret in (str(run), str(tmp_path), str(run_dir.parent), home, "/tmp/", "/work/"):
        assert secret not in text, secret
    leaks = [(where, s) for where, s in _strings(info) if _ABSOLUTE.search(s)]
    assert leaks == []
    # the walker itself finds a path wherever one hides
    planted = {"a": [{"b": f"fitted with cxr ood-fit --model {run}"}], "c": "C:\\runs\\x"}
    assert [w for w, s in _strings(planted) if _ABSOLUTE.search(s)] == [".a[0].b", ".c"]
    assert not _ABSOLUTE.search("mean/median, 1/2, see /api/model")


def test_model_info_carries_validation_intervals_and_positives(client, run_dir):
    """Training wrote patient-bootstrap intervals into val_metrics.json; /api/model shows them
    with the positives per finding."""

    written = json.loads((run_dir / "val_metrics.json").read_text())
    assert written["intervals"]["n_boot"] == 300 and written["intervals"]["seconds"] >= 0
    val = client.get("/api/model").get_json()["metrics"]["validation"]
    assert val["intervals"] == {"method": "patient bootstrap", "n_boot": 300, "level": 0.95}
    for name, m in val["per_finding"].items():
        low, high = m["auroc_ci"]
        assert 0 <= low <= m["auroc"] <= high <= 1, (name, m)
        assert m["n_positive"] + m["n_negative"] == val["n_images"]
        s_low, s_high = m["sensitivity_ci"]
        assert s_low <= m["sensitivity"] <= s_high


def test_model_info_says_not_computed_for_runs_trained_before_intervals(engine, run_dir, tmp_path):
    import shutil

    run = tmp_path / "old-run"
    shutil.copytree(run_dir, run)
    metrics = json.loads((run / "val_metrics.json").read_text())
    del metrics["intervals"]
    (run / "val_metrics.json").write_text(json.dumps(metrics))
    client = make_client(Engine({"model": str(run)}))
    response = client.get("/api/model")
    assert response.status_code == 200
    val = response.get_json()["metrics"]["validation"]
    assert val["intervals"] is None
    assert all(
        m["auroc_ci"] is None and m["auroc"] is not None for m in val["per_finding"].values()
    )
