"""Real DICOM files (pydicom's test files and the pydicom-data package) through the one decoder.

Every decodable greyscale file is compared with an independent reference built from pydicom's
own steps (pixel_array, apply_modality_lut, apply_voi_lut, then min-max and inversion). Where no
real file shows a case (a saturating window, Presentation LUT Shape INVERSE, a missing file meta,
a Deflated bomb, a codestream larger than its header), a real file's header is edited and the
test says so.
"""

from __future__ import annotations

import io
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cxr.data.dicom import INSTALL_DECODERS, codestream_size
from cxr.data.image_io import DecodeOptions, decode_bytes, read_image
from cxr.errors import DataError, DecodeWarning

ALLOW = DecodeOptions(allow_modality=True)


def real_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(path)


def fixture_files() -> list[Path]:
    bundled = Path(pydicom.data.__file__).parent / "test_files"
    files = [p for p in bundled.rglob("*") if p.is_file() and p.suffix in ("", ".dcm")]
    extra = get_testdata_file("RG1_UNCR.dcm", download=False)
    if extra is not None:
        files += list(Path(extra).parent.glob("*.dcm"))
    return sorted(files, key=lambda p: p.name)


# Files a decoder must refuse, and the cause it must name.
REFUSED = {
    "JPEG-lossy.dcm": "libjpeg error",  # a corrupt 12-bit JPEG Extended stream (pydicom's tests)
    "JPEG2000-embedded-sequence-delimiter.dcm": "larger than the header",
    "MR_truncated.dcm": "less than expected",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "not a readable DICOM",
    "badVR.dcm": "malformed DICOM header",
    "OBXXXX1A_expb.dcm": "blank image",  # big-endian palette: pydicom reads an all-zero LUT
    "OBXXXX1A_expb_2frame.dcm": "blank image",
}


def header(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True)
        except Exception:  # noqa: BLE001 - the fixtures include broken files on purpose
            return None


def greyscale_images() -> list[Path]:
    out = []
    for path in fixture_files():
        ds = header(path)
        if ds is None or "PixelData" not in ds or path.name in REFUSED:
            continue
        if str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME"):
            out.append(path)
    return out


def reference(path: Path) -> tuple[np.ndarray, bool]:
    """pydicom's own steps; (image, window used). A window that leaves no pixel strictly inside
    its output range is not used, which is the decoder's documented fallback."""
    ds = header(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = pixel_array(ds, index=0)
        stored = apply_modality_lut(arr, ds).astype(np.float64)
        out, used = stored, False
        if "WindowWidth" in ds or "VOILUTSequence" in ds:
            voi = apply_voi_lut(stored, ds).astype(np.float64)
            inside = np.mean((voi > voi.min()) & (voi < voi.max()))
            if inside >= 0.001:
                out, used = voi, True
    out = (out - out.min()) / (out.max() - out.min())
    shape = str(ds.get("PresentationLUTShape", "")).upper()
    if ds.PhotometricInterpretation == "MONOCHROME1" or shape == "INVERSE":
        out = 1.0 - out
    return out, used


GREY = greyscale_images()


def test_the_fixtures_cover_every_transfer_syntax_the_issue_names():
    names = {str(header(p).file_meta.TransferSyntaxUID.name) for p in GREY}
    for wanted in (
        "JPEG Lossless",
        "JPEG-LS Lossless",
        "JPEG-LS Lossy",
        "JPEG 2000 Image Compression (Lossless Only)",
        "JPEG 2000 Image Compression",
        "RLE Lossless",
        "Deflated Explicit VR",
        "JPEG Extended",
        "Implicit VR",
    ):
        assert any(n.startswith(wanted) for n in names), (wanted, names)
    assert len(GREY) > 60


@pytest.mark.parametrize("path", GREY, ids=lambda p: p.name)
def test_greyscale_file_matches_the_pydicom_reference(path):
    decoded = read_image(path, ALLOW)
    expected, window_used = reference(path)
    assert decoded.image.dtype == np.float32 and decoded.image.shape == expected.shape
    np.testing.assert_allclose(decoded.image, expected, atol=2e-6)
    ds = header(path)
    window_given = "WindowWidth" in ds or "VOILUTSequence" in ds
    fell_back = any("full stored range" in w for w in decoded.warnings)
    assert fell_back == (window_given and not window_used)


def test_every_radiograph_fixture_decodes_with_the_defaults():
    radiographs = [p for p in GREY if header(p).get("Modality") in ("CR", "DX", "RG")]
    assert {p.name for p in radiographs} >= {"RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KI.dcm"}
    for path in radiographs:
        assert np.ptp(read_image(path).image) == pytest.approx(1.0)


@pytest.mark.parametrize("name, cause", REFUSED.items())
def test_undecodable_file_is_refused_with_its_cause(name, cause):
    path = next((p for p in fixture_files() if p.name == name), None)
    if path is None:
        pytest.skip(f"{name} not installed")
    with pytest.raises(DataError, match=cause) as info:
        read_image(path, ALLOW)
    assert name in str(info.value)
    assert "pip install" not in str(info.value)  # no decoder is missing for any of these


def test_j2k_pixel_representation_mismatch_is_not_flat():
    """A J2K CT whose codestream and header disagree on signedness (the TOSHIBA_J2K_SIZ1_PixRep0
    family; that exact file is not among the installed fixtures) decodes as the reference."""
    path = real_file("J2K_pixelrep_mismatch.dcm")
    img = read_image(path, ALLOW).image
    assert img.std() > 0.1
    np.testing.assert_allclose(img, reference(path)[0], atol=2e-6)


def test_missing_decoder_names_the_install_command(monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # as if not installed
    with pytest.raises(DataError) as info:
        read_image(real_file("RG1_J2KR.dcm"))
    assert "no decoder for JPEG 2000" in str(info.value)
    assert INSTALL_DECODERS in str(info.value)


# --- modality, colour and metadata ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, modality",
    [
        ("CT_small.dcm", "CT"),
        ("MR_small.dcm", "MR"),
        ("US1_UNCR.dcm", "US"),
        ("JPEG2000.dcm", "NM"),
        ("rtdose.dcm", "RTDOSE"),
        ("liver.dcm", "SEG"),
    ],
)
def test_non_radiograph_modality_is_refused_unless_allowed(name, modality):
    path = real_file(name)
    with pytest.raises(DataError, match=f"modality {modality} is not a radiograph.*allow-modality"):
        read_image(path)
    assert read_image(path, ALLOW).meta["modality"] == modality


def test_colour_dicom_gives_the_colour_check_the_same_pixels_as_a_png(tmp_path):
    import cv2

    from cxr.inference.screening import coloured_fraction
    from cxr.ood.gate import colour_sample

    path = real_file("SC_rgb_jpeg_dcmtk.dcm")  # YBR_FULL JPEG: pydicom converts to RGB
    decoded = read_image(path)
    rgb = pixel_array(header(path))
    assert decoded.colour is not None
    np.testing.assert_array_equal(decoded.colour, rgb)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    as_png = coloured_fraction(colour_sample(png.tobytes()))
    assert coloured_fraction(decoded.colour) == pytest.approx(as_png) and as_png > 0.15
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(decoded.image, luma, atol=1e-5)


def test_palette_colour_goes_through_its_palette():
    path = real_file("OT-PAL-8-face.dcm")  # also a real file whose file meta has no syntax UID
    ds = header(path)
    assert "TransferSyntaxUID" not in ds.file_meta
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    decoded = read_image(path)
    rgb = apply_color_lut(ds.pixel_array, ds)
    top = 2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1
    luma = rgb.astype(np.float64) / top @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(decoded.image, luma, atol=1e-5)
    indices = ds.pixel_array / 255.0
    assert np.abs(decoded.image - indices).mean() > 0.05  # not the grey indices passed through
    assert decoded.colour is not None and decoded.colour.shape[2] == 3


def test_metadata_from_the_header_without_identifiers():
    decoded = read_image(real_file("RG1_UNCR.dcm"))
    assert decoded.meta == {
        "modality": "CR",
        "body_part": "CHEST",
        "view": "PA",
        "sex": "F",
        "age": None,
    }
    kept = read_image(real_file("RG1_UNCR.dcm"), DecodeOptions(keep_identifiers=True)).meta
    assert kept["PatientName"] == "CompressedSamples^RG1"


def test_not_a_frontal_chest_is_warned():
    decoded = read_image(real_file("RG3_UNCR.dcm"))  # an AP extremity CR
    assert any("BodyPartExamined is EXTREMITY" in w for w in decoded.warnings)
    with pytest.warns(DecodeWarning, match="EXTREMITY"):
        decode_bytes(real_file("RG3_UNCR.dcm").read_bytes(), "rg3")


def test_age_strings():
    from cxr.data.dicom import _age_years

    assert _age_years("058Y") == 58 and _age_years("006M") == 0.5 and _age_years("") is None
    assert _age_years("abcY") is None


# --- header edits of real files: cases no fixture shows -------------------------------------


def edited(name: str, **elements) -> bytes:
    ds = header(real_file(name))
    for key, value in elements.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "elements, why",
    [
        ({"WindowCenter": 90000, "WindowWidth": 10}, "saturates every stored value"),
        ({"WindowCenter": 2000, "WindowWidth": 0}, "Window Width is 0"),
    ],
)
def test_degenerate_window_falls_back_to_the_full_range(elements, why):
    full = read_image(real_file("RG1_J2KR.dcm")).image  # the real window (30000 wide) is fine
    decoded = read_image_bytes_warned(edited("RG1_J2KR.dcm", **elements), why)
    np.testing.assert_allclose(decoded, 1 - min_max_of_stored("RG1_J2KR.dcm"), atol=2e-6)
    assert decoded.std() > 0.1 and full.std() > 0.1


def read_image_bytes_warned(data: bytes, why: str) -> np.ndarray:
    with pytest.warns(DecodeWarning, match=why):
        return decode_bytes(data, "edited.dcm")


def min_max_of_stored(name: str) -> np.ndarray:
    ds = header(real_file(name))
    stored = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    return (stored - stored.min()) / (stored.max() - stored.min())


def test_flat_dicom_is_refused_as_blank():
    ds = header(real_file("RG1_UNCR.dcm"))
    ds.PixelData = np.full((ds.Rows, ds.Columns), 1200, np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DataError, match="blank image after windowing"):
        decode_bytes(buf.getvalue(), "flat.dcm")


def test_presentation_lut_inverse_is_honoured():
    """No fixture is MONOCHROME2 + INVERSE: RG1's header edited (its twin is the IDENTITY one)."""
    identity = edited(
        "RG1_UNCR.dcm", PhotometricInterpretation="MONOCHROME2", PresentationLUTShape="IDENTITY"
    )
    inverse = edited(
        "RG1_UNCR.dcm", PhotometricInterpretation="MONOCHROME2", PresentationLUTShape="INVERSE"
    )
    np.testing.assert_allclose(decode_bytes(inverse), 1 - decode_bytes(identity), atol=1e-6)
    # MONOCHROME1 with INVERSE (as DX requires) is inverted once, not twice
    m1 = edited("RG1_UNCR.dcm", PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(decode_bytes(m1), decode_bytes(inverse), atol=1e-6)


def no_meta_copy(name: str) -> bytes:
    """Like an old Fuji CR export: no preamble, no file meta, implicit VR little endian."""
    ds = header(real_file(name))
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def test_dicom_without_file_meta_reads_as_implicit_little_endian():
    data = no_meta_copy("RG1_UNCR.dcm")
    assert data[128:132] != b"DICM" and b"\x02\x00\x10\x00" not in data[:200]
    original = read_image(real_file("RG1_UNCR.dcm")).image
    np.testing.assert_array_equal(decode_bytes(data, "IM0"), original)


def test_extensionless_and_misnamed_files_are_decoded_by_content(tmp_path, nih_samples):
    dicom = tmp_path / "IM000000"
    dicom.write_bytes(real_file("RG1_UNCR.dcm").read_bytes())
    png = tmp_path / "x.dcm"
    png.write_bytes((nih_samples / "images" / "00000001_000.png").read_bytes())
    assert read_image(dicom).format == "dicom"
    assert read_image(png).format == "png"


# --- bombs: refused from headers, before any large allocation ---------------------------------


@pytest.fixture(scope="module")
def deflate_bomb() -> bytes:
    """A Deflated data set claiming 64 x 64 pixels that inflates to 256 MiB (an edited copy of
    pydicom's real Deflated file)."""
    ds = header(real_file("image_dfl.dcm"))
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = bytes(256 << 20)
    buf = io.BytesIO()
    ds.save_as(buf)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert len(buf.getvalue()) < 1_000_000
    return buf.getvalue()


def test_deflated_bomb_is_refused_while_inflating(deflate_bomb):
    data = deflate_bomb
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="decompression bomb"):
            decode_bytes(data, "bomb.dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # the cap is the header's pixels + 16 MiB, never the whole payload


def test_deflated_bomb_is_refused_by_the_upload_screening_too(deflate_bomb):
    """The API reads the header first (to refuse CT, MR...): that read is bounded as well."""
    from cxr.inference.screening import decode_upload

    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="decompression bomb"):
            decode_upload(deflate_bomb, "bomb.dcm", 40_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_real_deflated_file_decodes():
    path = real_file("image_dfl.dcm")
    np.testing.assert_allclose(read_image(path).image, reference(path)[0], atol=2e-6)


def test_codestream_larger_than_the_header_is_refused():
    """RG1's real JPEG 2000 frame with Rows / Columns edited down to 256 x 256."""
    data = edited("RG1_J2KR.dcm", Rows=256, Columns=256)
    with pytest.raises(DataError, match="1841 x 1955, larger than the header's 256 x 256"):
        decode_bytes(data, "liar.dcm")


def test_codestream_size_reads_jpeg_and_j2k_headers():
    ds = header(real_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    assert codestream_size(frame) == (ds.Columns, ds.Rows)
    ds = header(real_file("emri_small_jpeg_ls_lossless.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=int(ds.NumberOfFrames))
    assert codestream_size(frame) == (ds.Columns, ds.Rows)
    assert codestream_size(b"not a codestream") is None


def test_dicom_over_max_pixels_is_refused_before_decoding():
    with pytest.raises(DataError, match="1841 x 1955 = .* over the limit"):
        read_image(real_file("RG1_J2KR.dcm"), DecodeOptions(max_pixels=1_000_000))
