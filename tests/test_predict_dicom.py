"""`cxr predict FOLDER` on a PACS-style folder of real DICOM files (pydicom-data's RG1 chest CR):
an extensionless copy, a copy without file meta, a saturating window, a flat image, a CT, a
colour secondary capture and a text file. Each file is predicted, or its row says why not."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cxr.cli import main

pytestmark = pytest.mark.slow


def real(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(path)


def saved(ds, **kwargs) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pacs_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pacs") / "DICOM" / "S0001"
    folder.mkdir(parents=True)
    rg1 = real("RG1_UNCR.dcm")
    (folder / "IM000000").write_bytes(rg1.read_bytes())
    ds = pydicom.dcmread(rg1)
    del ds.file_meta
    ds.preamble = None
    (folder / "IM000001").write_bytes(saved(ds, implicit_vr=True, little_endian=True))
    ds = pydicom.dcmread(rg1)
    ds.WindowCenter, ds.WindowWidth = 90000, 10  # misses every stored value
    (folder / "saturated.dcm").write_bytes(saved(ds))
    ds = pydicom.dcmread(rg1)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 1200, np.uint16).tobytes()
    (folder / "flat.dcm").write_bytes(saved(ds))
    (folder / "ct.dcm").write_bytes(real("CT_small.dcm").read_bytes())
    (folder / "colour.dcm").write_bytes(real("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    (folder / "notes.txt").write_text("reading list\n")
    return folder.parent.parent


def predict(run: Path, folder: Path, out: Path, *flags: str) -> dict[str, dict]:
    args = ["predict", str(folder), "--model", str(run), "--out", str(out), "--no-ood-gate"]
    assert main([*args, *flags]) == 0
    return {r["file"]: r for r in csv.DictReader(out.open())}


def test_every_file_is_predicted_or_says_why(tiny_kermany_run, pacs_folder, tmp_path, capsys):
    rows = predict(tiny_kermany_run, pacs_folder, tmp_path / "p.csv")
    said = capsys.readouterr().out
    assert "3 image(s) predicted, 3 could not be used, 1 file(s) skipped" in said
    assert "skipped DICOM/S0001/notes.txt: not an image file" in said
    row = {Path(name).name: r for name, r in rows.items()}
    assert len(row) == 7
    for ok in ("IM000000", "IM000001", "saturated.dcm"):
        assert row[ok]["status"] == "ok", row[ok]
    assert row["IM000000"]["top_finding"] == row["IM000001"]["top_finding"]
    assert row["IM000000"]["NORMAL_probability"] == row["IM000001"]["NORMAL_probability"]
    assert "saturates every stored value" in row["saturated.dcm"]["warning"]
    assert row["flat.dcm"]["status"] == "error" and "blank image" in row["flat.dcm"]["error"]
    assert "(Modality CT), not a chest radiograph" in row["ct.dcm"]["error"]
    assert "colour photograph" in row["colour.dcm"]["error"]
    assert row["notes.txt"]["status"] == "skipped" and "not an image" in row["notes.txt"]["error"]
    text = (tmp_path / "p.csv").read_text()
    assert "CompressedSamples" not in text and "PatientName" not in text  # no identifiers


def test_identifiers_only_when_asked(tiny_kermany_run, pacs_folder, tmp_path):
    rows = predict(tiny_kermany_run, pacs_folder, tmp_path / "ids.csv", "--keep-identifiers")
    row = next(r for name, r in rows.items() if name.endswith("IM000000"))
    assert row["PatientName"] == "CompressedSamples^RG1"


def test_api_refuses_other_modalities_and_colour_dicom(tiny_kermany_run):
    from cxr.serve import create_app

    def post(data: bytes, name: str, **cfg):
        app = create_app({"model": str(tiny_kermany_run), "ood_gate": False, **cfg})
        client = app.test_client()
        return client.post("/api/predict?heatmaps=none", data={"file": (io.BytesIO(data), name)})

    ct = real("CT_small.dcm").read_bytes()
    refused = post(ct, "ct.dcm")
    assert refused.status_code == 422 and "(Modality CT)" in refused.get_json()["error"]
    assert post(ct, "ct.dcm", allow_modality=True).status_code == 200
    colour = post(real("SC_rgb_jpeg_dcmtk.dcm").read_bytes(), "sc.dcm")
    assert colour.status_code == 422 and colour.get_json()["code"] == "not_a_chest_xray"
    rg1 = post(real("RG1_UNCR.dcm").read_bytes(), "IM000000")
    assert rg1.status_code == 200
    assert "CompressedSamples" not in rg1.get_data(as_text=True)  # no patient name echoed


def test_csv_carries_the_body_part_caution_the_web_analyser_shows(tiny_kermany_run, tmp_path):
    """A real chest CR (RG1) whose header, in a tmp copy, says BodyPartExamined KNEE: its row
    is predicted and its `caution` column says what the web Analyser says; the unedited copy's
    caution is empty."""
    from cxr.inference.screening import decode_upload

    folder = tmp_path / "in"
    folder.mkdir()
    rg1 = real("RG1_UNCR.dcm")
    (folder / "chest.dcm").write_bytes(rg1.read_bytes())
    ds = pydicom.dcmread(rg1)
    ds.BodyPartExamined = "KNEE"
    knee = saved(ds)
    (folder / "knee.dcm").write_bytes(knee)
    rows = predict(tiny_kermany_run, folder, tmp_path / "p.csv")
    assert rows["knee.dcm"]["status"] == "ok" and rows["chest.dcm"]["status"] == "ok"
    shown = decode_upload(knee, "knee.dcm", 40_000_000).caution  # what /api/predict warns
    assert shown and "KNEE" in shown
    assert rows["knee.dcm"]["caution"] == shown
    assert rows["chest.dcm"]["caution"] == ""


@pytest.mark.parametrize(("name", "modality"), [("rtdose.dcm", "RTDOSE"), ("liver.dcm", "SEG")])
def test_one_modality_list_refuses_in_the_decoder_and_the_upload_screening(name, modality):
    """RTDOSE and SEG (outside the radiograph list) are refused by the upload screening from
    the header, as by the decoder: one list, cxr.data.modality.RADIOGRAPH_MODALITIES."""
    from cxr.data.image_io import read_image
    from cxr.errors import DataError, NotAChestXray
    from cxr.inference.screening import decode_upload

    data = real(name).read_bytes()
    with pytest.raises(NotAChestXray, match=f"\\(Modality {modality}\\), not a chest radiograph"):
        decode_upload(data, name, 40_000_000)
    with pytest.raises(DataError, match=f"modality {modality} is not a radiograph"):
        read_image(real(name))
