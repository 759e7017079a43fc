"""Decoding real chest X-rays (and files written from their pixels) to the intensity contract."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image, ImageOps

from cxr.data.image_io import (
    IMAGE_EXTENSIONS,
    DecodeOptions,
    DecodeWarning,
    decode_bytes,
    decode_image,
    to_unit_grey,
)
from cxr.errors import DataError


@pytest.fixture(scope="module")
def grey_png(nih_samples: Path) -> Path:
    return nih_samples / "images" / "00000001_000.png"  # 512 x 512, 8-bit grey


@pytest.fixture(scope="module")
def grey_pixels(grey_png: Path) -> np.ndarray:
    pixels = cv2.imread(str(grey_png), cv2.IMREAD_UNCHANGED)
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    return pixels


@pytest.fixture(scope="module")
def kermany_jpeg(kermany_train: Path) -> Path:
    return kermany_train / "NORMAL" / "IM-0115-0001.jpeg"


def assert_contract(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.dtype == np.float32
    assert img.shape == shape
    assert img.min() >= 0.0 and img.max() <= 1.0


# --- real PNG / JPEG -------------------------------------------------------------------------


def test_grey_png_is_scaled_by_bit_depth_not_stretched(grey_png, grey_pixels):
    img = decode_image(grey_png)
    assert_contract(img, grey_pixels.shape)
    np.testing.assert_allclose(img, grey_pixels / 255.0, atol=1e-6)


def test_rgb_png_becomes_its_grey_content(nih_1000):
    path = nih_1000 / "images" / "00000001_000.png"  # grey content stored as RGB
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (64, 64, 3)
    img = decode_image(path)
    assert_contract(img, (64, 64))
    np.testing.assert_allclose(img, bgr[..., 0] / 255.0, atol=1e-6)


def test_rgba_png_ignores_alpha(nih_1000):
    path = nih_1000 / "images" / "00000004_000.png"
    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgra.shape == (64, 64, 4)
    img = decode_image(path)
    assert_contract(img, (64, 64))
    np.testing.assert_allclose(img, bgra[..., 0] / 255.0, atol=1e-6)


def test_transparent_rgba_keeps_its_picture(tmp_path, grey_pixels):
    rgba = np.dstack([grey_pixels] * 3 + [np.zeros_like(grey_pixels)])
    path = tmp_path / "clear.png"
    cv2.imwrite(str(path), rgba)
    np.testing.assert_allclose(decode_image(path), grey_pixels / 255.0, atol=1e-6)


def test_colour_is_reduced_to_bt601_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[1:, :, 0] = 255  # pure red below a black first row (a flat image would be refused)
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_allclose(decode_image(path)[1:], 0.299, atol=1e-6)


def test_kermany_jpeg_grey_stored_as_rgb(kermany_jpeg):
    bgr = cv2.imread(str(kermany_jpeg), cv2.IMREAD_UNCHANGED)
    img = decode_image(kermany_jpeg)
    assert_contract(img, (224, 224))
    np.testing.assert_allclose(img, bgr[..., 1] / 255.0, atol=1e-6)


def test_16_bit_png_gives_the_same_picture_as_8_bit(tmp_path, grey_png, grey_pixels):
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), grey_pixels.astype(np.uint16) * 257)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really 16-bit
    img = decode_image(path)
    assert_contract(img, grey_pixels.shape)
    np.testing.assert_allclose(img, decode_image(grey_png), atol=1e-6)


def test_16_bit_dark_image_stays_dark_when_asked(tmp_path, grey_pixels):
    path = tmp_path / "dark.png"
    dark = grey_pixels.astype(np.uint16) * 8  # values up to 2040: dark if really 16-bit
    cv2.imwrite(str(path), dark)
    sixteen = DecodeOptions(png_bit_depth=16)
    np.testing.assert_allclose(decode_image(path, options=sixteen), dark / 65535, atol=1e-7)


@pytest.mark.parametrize("suffix", [".bmp", ".tif"])
def test_bmp_and_tiff(tmp_path, grey_pixels, suffix):
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), grey_pixels)
    np.testing.assert_allclose(decode_image(path), grey_pixels / 255.0, atol=1e-6)


def test_jpeg_exif_rotation_is_applied_like_pil(tmp_path, kermany_jpeg):
    wide = np.asarray(Image.open(kermany_jpeg).convert("L"))[:, :160]  # non-square: 224 x 160
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    Image.fromarray(wide).save(path, quality=95, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path))) / 255.0
    img = decode_image(path)
    assert img.shape == (160, 224)
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_decode_bytes_matches_decode_image(kermany_jpeg):
    data = kermany_jpeg.read_bytes()
    np.testing.assert_array_equal(
        decode_bytes(data, name="upload.jpeg"), decode_image(kermany_jpeg)
    )


def test_image_extensions_cover_the_supported_formats():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"} <= IMAGE_EXTENSIONS


# --- to_unit_grey ----------------------------------------------------------------------------


def test_to_unit_grey_scales_by_dtype():
    np.testing.assert_allclose(to_unit_grey(np.full((2, 2), 51, np.uint8), "a"), 0.2, atol=1e-7)
    np.testing.assert_allclose(to_unit_grey(np.full((2, 2), 65535, np.uint16), "a"), 1.0, atol=1e-7)
    out = to_unit_grey(np.array([[-0.5, 0.25], [0.5, 7.0]]), "a")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(to_unit_grey(np.full((2, 2, 1), 255, np.uint8), "a"), 1.0)


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.ones((3, 3), dtype=bool), "bool"),
        (np.ones((3, 3), dtype=np.int32), "int32"),
        (np.array([[np.nan, 0.5]]), "NaN"),
        (np.zeros((3, 3, 5), dtype=np.uint8), "shape"),
        (np.zeros((0, 3), dtype=np.uint8), "zero-size"),
    ],
)
def test_to_unit_grey_rejects_what_it_cannot_scale(arr, message):
    with pytest.raises(DataError, match=message) as info:
        to_unit_grey(arr, source="memory#3")
    assert "memory#3" in str(info.value)


# --- DICOM -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored12(grey_pixels) -> np.ndarray:
    """The real image as 12-bit stored values (0..4095)."""
    return (grey_pixels.astype(np.uint32) * 4095 // 255).astype(np.uint16)


def min_max(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


def test_dicom_12_bit_is_min_maxed(tmp_path, stored12, grey_pixels):
    img = decode_image(write_dicom(tmp_path / "a.dcm", stored12))
    assert_contract(img, stored12.shape)
    assert img.min() == 0.0 and img.max() == 1.0
    np.testing.assert_allclose(img, min_max(grey_pixels), atol=1e-3)


def test_dicom_16_bit(tmp_path, grey_pixels):
    stored = grey_pixels.astype(np.uint16) * 257
    img = decode_image(write_dicom(tmp_path / "a.dcm", stored, bits_stored=16))
    np.testing.assert_allclose(img, min_max(grey_pixels), atol=1e-5)


def test_dicom_monochrome1_is_inverted(tmp_path, stored12, grey_pixels):
    path = write_dicom(tmp_path / "m1.dcm", stored12, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(decode_image(path), 1.0 - min_max(grey_pixels), atol=1e-3)


def test_dicom_negative_rescale_slope_is_applied(tmp_path, stored12, grey_pixels):
    path = write_dicom(tmp_path / "s.dcm", stored12, RescaleSlope=-1, RescaleIntercept=4095)
    np.testing.assert_allclose(decode_image(path), 1.0 - min_max(grey_pixels), atol=1e-3)


def test_dicom_window_applies_after_rescale(tmp_path, stored12):
    # modality values = 2 * stored - 1000; the window [500, 2500] is in those units
    path = write_dicom(
        tmp_path / "w.dcm",
        stored12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1500,
        WindowWidth=2000,
    )
    modality = stored12 * 2.0 - 1000
    expected = min_max(np.clip((modality - 500) / 2000, 0, 1))
    img = decode_image(path)
    np.testing.assert_allclose(img, expected, atol=2e-3)
    saturated = (modality >= 2500).mean()
    assert saturated > 0.05  # the window really clips this image
    assert np.isclose((img >= 0.999).mean(), saturated, atol=0.01)


def test_dicom_found_by_magic_without_extension(tmp_path, stored12, grey_pixels):
    path = write_dicom(tmp_path / "scan", stored12)
    np.testing.assert_allclose(decode_image(path), min_max(grey_pixels), atol=1e-3)
    from_bytes = decode_bytes(path.read_bytes(), name="upload")
    np.testing.assert_array_equal(from_bytes, decode_image(path))


def test_dicom_multi_frame_takes_the_chosen_frame(tmp_path, stored12, grey_pixels):
    frames = np.stack([stored12, 4095 - stored12])
    path = write_dicom(tmp_path / "cine.dcm", frames, NumberOfFrames=2)
    np.testing.assert_allclose(decode_image(path), min_max(grey_pixels), atol=1e-3)
    second = decode_image(path, options=DecodeOptions(frame=1))
    np.testing.assert_allclose(second, 1 - min_max(grey_pixels), atol=1e-3)
    with pytest.raises(DataError, match="frame 2 asked for.*2 frame") as info:
        decode_image(path, options=DecodeOptions(frame=2))
    assert "cine.dcm" in str(info.value)


def test_dicom_over_max_pixels_is_refused(tmp_path, stored12):
    path = write_dicom(tmp_path / "big.dcm", stored12)
    with pytest.raises(DataError, match="over the limit"):
        decode_image(path, max_pixels=1000)


def test_dicom_without_pixels_is_refused(tmp_path, stored12):
    path = write_dicom(tmp_path / "sr.dcm", stored12)
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DataError, match="no pixel data"):
        decode_image(path)


# --- bad input -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        decode_image(tmp_path / "nope.png")
    assert info.value.path == str(tmp_path / "nope.png")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        decode_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        decode_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n" * 20)
    with pytest.raises(DataError, match="not a readable image") as info:
        decode_image(path)
    assert "notes.png" in str(info.value)


@pytest.mark.parametrize("which", ["jpeg", "png"])
def test_truncated_real_file_is_corrupt(tmp_path, kermany_jpeg, grey_png, which):
    source = kermany_jpeg if which == "jpeg" else grey_png
    path = tmp_path / f"cut.{which}"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt") as info:
        decode_image(path)
    assert f"cut.{which}" in str(info.value)


def test_bit_flipped_png_is_corrupt(tmp_path, grey_png):
    data = bytearray(grey_png.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the CRC no longer matches
    with pytest.raises(DataError, match="corrupt"):
        decode_bytes(bytes(data), name="flipped.png")


def test_non_dicom_named_dcm(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(DataError, match="fake.dcm"):
        decode_image(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no pixels: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 100_000])  # over our limit; over PIL's own as well
def test_decompression_bomb_refused_from_header(side):
    with pytest.raises(DataError, match="pixels|too large") as info:
        decode_bytes(png_header_only(side, side), name="bomb.png")
    assert "bomb.png" in str(info.value)


def test_real_image_over_max_pixels(grey_png):
    with pytest.raises(DataError, match="512 x 512"):
        decode_image(grey_png, max_pixels=512 * 511)


def test_zero_width_header():
    with pytest.raises(DataError, match="zero-size|not a readable"):
        decode_bytes(png_header_only(0, 10), name="zero.png")


def test_pil_can_read_our_bomb_header():
    """Guards the test above: the header is well-formed, so the refusal is about its size."""
    with Image.open(io.BytesIO(png_header_only(300, 200))) as im:
        assert im.size == (300, 200)


# --- PNG headers: sBIT, eXIf, chunk count, sample bytes; content over extension ---------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """Insert an ancillary chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + png_chunk(kind, body) + png[33:]


@pytest.fixture(scope="module")
def png12(grey_pixels) -> tuple[np.ndarray, bytes]:
    """The real image as 12-bit values in a 16-bit PNG, as CR/DX exports write them."""
    values = (grey_pixels.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    ok, buf = cv2.imencode(".png", values)
    assert ok
    return values, buf.tobytes()


def test_png_sbit_12_is_honoured(png12):
    values, png = png12
    img = decode_bytes(with_chunk(png, b"sBIT", b"\x0c"), "sbit12.png")
    np.testing.assert_allclose(img, values / 4095, atol=1e-6)


def test_png_sbit_with_spec_scaled_values_stays_16_bit(grey_pixels):
    values = grey_pixels.astype(np.uint16) * 257  # 8-bit data scaled up to 16 bits, sBIT = 8
    ok, buf = cv2.imencode(".png", values)
    img = decode_bytes(with_chunk(buf.tobytes(), b"sBIT", b"\x08"), "sbit8.png")
    np.testing.assert_allclose(img, grey_pixels / 255, atol=1e-6)


def test_png_12_bit_without_sbit_auto_warns_and_says_what_it_did(png12):
    values, png = png12
    with pytest.warns(DecodeWarning, match="read as 12-bit.*--png-bit-depth 16"):
        img = decode_bytes(png, "export.png")
    np.testing.assert_allclose(img, values / 4095, atol=1e-6)
    explicit = decode_bytes(png, "export.png", options=DecodeOptions(png_bit_depth=12))
    np.testing.assert_array_equal(explicit, img)
    with pytest.raises(DataError, match="--png-bit-depth 10 but the PNG holds values up to 4095"):
        decode_bytes(png, "export.png", options=DecodeOptions(png_bit_depth=10))


def test_png_exif_orientation_is_applied(grey_pixels):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(grey_pixels[:, :300]).save(buf, "PNG", exif=exif)
    assert b"eXIf" in buf.getvalue()
    img = decode_bytes(buf.getvalue(), "rotated.png")
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    np.testing.assert_allclose(img, shown / 255.0, atol=1e-6)
    assert img.shape == (300, 512)


def test_png_named_dcm_is_decoded_as_png(grey_png, grey_pixels):
    img = decode_bytes(grey_png.read_bytes(), name="x.dcm")
    np.testing.assert_allclose(img, grey_pixels / 255.0, atol=1e-6)


def test_very_wide_valid_png_is_not_corrupt(grey_pixels):
    """Wider than OpenCV's 2^20-pixel limit: PIL decodes it."""
    row = np.tile(grey_pixels[0], 2100)[:1_100_000]
    wide = np.stack([row, row[::-1]])
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    np.testing.assert_allclose(decode_bytes(buf.getvalue(), "wide.png"), wide / 255.0, atol=1e-6)


def test_png_of_millions_of_chunks_is_refused_quickly(grey_png):
    data = grey_png.read_bytes()
    empty = png_chunk(b"prVt", b"")
    bomb = data[:33] + empty * 2_600_000 + data[33:]  # 31 MB, as in the report
    with pytest.raises(DataError, match="over 20,000 chunks"):
        decode_bytes(bomb, "chunks.png")


def test_16_bit_rgba_header_is_refused_by_sample_bytes():
    """6300 x 6300 is under 40 Mpx, but 16-bit RGBA needs 318 MB of samples."""
    ihdr = struct.pack(">IIBBBBB", 6300, 6300, 16, 6, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    with pytest.raises(DataError, match="bytes of samples, over the limit"):
        decode_bytes(data, "rgba16.png", max_pixels=40_000_000)


def test_flat_png_is_refused_as_blank(tmp_path):
    path = tmp_path / "flat.png"
    cv2.imwrite(str(path), np.full((64, 64), 128, np.uint8))
    with pytest.raises(DataError, match="blank image") as info:
        decode_image(path)
    assert "flat.png" in str(info.value)
