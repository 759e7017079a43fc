"""Decode one image file (or uploaded bytes) to the intensity contract in `cxr.data.table`.

Every format goes through `to_unit_grey`, so the scaling rule (uint8 / 255, uint16 / 65535, DICOM
after its own LUTs then min-max) lives in one place. Sizes are checked from the header before any
pixel is decoded, so a small file that claims to be huge (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr.data.png_info import PNG_SIGNATURE, read_png_info
from cxr.data.sniff import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, check_pixel_count, sniff_bytes
from cxr.errors import DataError, DecodeWarning, TooLarge

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "DecodeOptions",
    "DecodeWarning",
    "DecodedImage",
    "decode_bytes",
    "decode_image",
    "read_image",
    "read_image_bytes",
    "to_unit_grey",
]

_RASTER_FORMATS = ["PNG", "JPEG", "BMP", "TIFF"]  # PIL plugins allowed to read headers
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cv2.cvtColor
# A decoded image whose values span less than one 8-bit grey level carries no picture: refused.
BLANK_RANGE = 1.0 / 255.0
_COLOUR_SAMPLE = 256  # colour copies for the colour check are at most this wide
PngBitDepth = Union[Literal["auto"], int]  # noqa: UP007 - pydantic on Python 3.10


class DecodeOptions(BaseModel):
    """How files are decoded; each field has a CLI flag on the commands that read images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(100_000_000, gt=0, description="larger images are refused unread")
    frame: int = Field(0, ge=0, description="multi-frame DICOM: the frame to read (--frame)")
    png_bit_depth: PngBitDepth = Field(
        "auto", description="16-bit PNG without sBIT: significant bits, or auto (--png-bit-depth)"
    )
    allow_modality: bool = Field(False, description="read DICOM modalities other than radiographs")
    keep_identifiers: bool = Field(False, description="keep patient identifiers in metadata")

    @field_validator("png_bit_depth")
    @classmethod
    def _depth(cls, value: PngBitDepth) -> PngBitDepth:
        if value != "auto" and not (isinstance(value, int) and 8 <= value <= 16):
            raise ValueError("png_bit_depth is 'auto' or an integer from 8 to 16")
        return value


@dataclass
class DecodedImage:
    """The contract's pixels, plus what the screening layer and the tables need to know."""

    image: np.ndarray  # float32, 2-D, [0, 1]
    format: str  # "dicom", "png", "jpeg", "bmp", "tiff"
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, object] = field(default_factory=dict)  # DICOM: modality, body part, view...
    colour: np.ndarray | None = None  # DICOM colour sources: RGB uint8, at most 256 wide


def decode_image(
    path: str | Path, max_pixels: int = 100_000_000, options: DecodeOptions | None = None
) -> np.ndarray:
    """Pixels of an image file as a 2-D float32 array in [0, 1]; DataError names what is wrong.

    The decoder's choices (a fallback window, a guessed PNG bit depth) are DecodeWarnings.
    """
    decoded = read_image(path, _options(options, max_pixels))
    _emit(decoded)
    return decoded.image


def decode_bytes(
    data: bytes,
    name: str = "upload",
    max_pixels: int = 100_000_000,
    options: DecodeOptions | None = None,
) -> np.ndarray:
    """Same as `decode_image` for bytes held in memory (uploads); nothing is written to disk."""
    decoded = read_image_bytes(data, name, _options(options, max_pixels))
    _emit(decoded)
    return decoded.image


def read_image(path: str | Path, options: DecodeOptions | None = None) -> DecodedImage:
    """`decode_image` with its warnings, metadata and colour copy returned instead of warned."""
    path = Path(path)
    if not path.exists():
        raise DataError("image file not found", path=str(path))
    if not path.is_file():
        raise DataError("not a file (expected an image)", path=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from exc
    return read_image_bytes(data, str(path), options)


def read_image_bytes(
    data: bytes, name: str = "upload", options: DecodeOptions | None = None
) -> DecodedImage:
    """The one decoder: the content picks the format, the extension never does."""
    opts = options or DecodeOptions()
    if not data:
        raise DataError("empty file (0 bytes), not an image", path=name)
    fmt = sniff_bytes(data[:132], name)
    if fmt == "dicom":
        from cxr.data.dicom import decode_dicom

        dicom = decode_dicom(
            data,
            name,
            opts.max_pixels,
            frame=opts.frame,
            allow_modality=opts.allow_modality,
            keep_identifiers=opts.keep_identifiers,
        )
        colour = None if dicom.colour is None else _shrink(dicom.colour)
        decoded = DecodedImage(dicom.image, "dicom", dicom.warnings, dicom.meta, colour)
    else:
        decoded = _decode_raster(data, name, opts)
    _check_not_blank(decoded.image, name)
    return decoded


def _options(options: DecodeOptions | None, max_pixels: int) -> DecodeOptions:
    if options is None:
        return DecodeOptions(max_pixels=max_pixels)
    return options


def _emit(decoded: DecodedImage) -> None:
    for message in decoded.warnings:
        warnings.warn(message, DecodeWarning, stacklevel=3)


def _check_not_blank(image: np.ndarray, name: str) -> None:
    """A flat image is never predicted on: a blank DX once came out as Effusion 0.9999."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < BLANK_RANGE:
        raise DataError(
            f"blank image after windowing: its values span {hi - lo:.2g} of the [0, 1] range "
            "(under one grey level), so there is nothing to predict on",
            path=name,
        )


def _shrink(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= _COLOUR_SAMPLE:
        return rgb
    size = (_COLOUR_SAMPLE, max(1, round(h * _COLOUR_SAMPLE / w)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def to_unit_grey(arr: np.ndarray, source: str) -> np.ndarray:
    """(H, W) or (H, W, 3/4) RGB(A) pixels to the contract: float32, 2-D, [0, 1], luminance.

    The scale comes from the dtype (the stored bit depth), never from the values, so a dark
    8-bit image stays dark. Floats are taken to be in [0, 1] already and are clipped.
    """
    arr = np.asarray(arr)
    if arr.size == 0:
        raise DataError(f"zero-size image (shape {arr.shape})", path=source)
    if arr.ndim == 3 and arr.shape[2] in (1, 2):  # grey, or grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        unit = _scale_to_unit(arr[..., :3], source)  # alpha is ignored
        grey = unit @ _LUMA
    elif arr.ndim == 2:
        grey = _scale_to_unit(arr, source)
    else:
        raise DataError(
            f"expected an (H, W) or (H, W, 3/4) image, got shape {arr.shape}", path=source
        )
    return np.ascontiguousarray(np.clip(grey, 0.0, 1.0), dtype=np.float32)


def _scale_to_unit(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError("image has NaN or infinite pixel values", path=source)
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise DataError(
        f"unsupported pixel type {arr.dtype}: expected uint8, uint16 or float in [0, 1]",
        path=source,
    )


def _decode_raster(data: bytes, name: str, opts: DecodeOptions) -> DecodedImage:
    """PNG / JPEG / BMP / TIFF: headers first (PIL, and our PNG chunk walk), OpenCV decodes.

    OpenCV with IMREAD_UNCHANGED keeps 16-bit samples that PIL would squash or widen; PIL
    decodes what OpenCV's own size limits refuse (valid, very wide PNGs).
    """
    # PNG chunks are walked first: PIL's own header read loops over every chunk before IDAT
    png = read_png_info(data, name) if data.startswith(PNG_SIGNATURE) else None
    width, height, fmt, orientation, raw_bytes = _raster_header(data, name)
    if png is not None:
        raw_bytes = png.raw_bytes
        if png.exif:
            orientation = _orientation_from_exif(png.exif)
    check_pixel_count(width, height, opts.max_pixels, name)
    if raw_bytes > opts.max_pixels * 3:
        raise TooLarge(
            f"image is {width} x {height} with {raw_bytes:,} bytes of samples, over the limit of "
            f"{opts.max_pixels * 3:,} (refused before decoding)",
            path=name,
        )
    if fmt in ("JPEG", "MPO") and _jpeg_truncated(data):
        raise DataError("corrupt JPEG: the file ends before the image data does", path=name)
    arr = _pixels(data, name, fmt)
    notes: list[str] = []
    if png is not None and arr.dtype == np.uint16:
        arr = _png_16_bit(arr, png.significant_bits, opts.png_bit_depth, notes, name)
    return DecodedImage(
        to_unit_grey(_apply_exif_orientation(arr, orientation), source=name),
        fmt.lower() if fmt != "MPO" else "jpeg",
        notes,
    )


def _pixels(data: bytes, name: str, fmt: str) -> np.ndarray:
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None
    if arr is None:
        return _pil_pixels(data, name, fmt)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., 2::-1]  # OpenCV's BGR(A) to RGB; alpha dropped
    return arr


def _pil_pixels(data: bytes, name: str, fmt: str) -> np.ndarray:
    """PIL's decode, for what OpenCV refuses; a failure here means the file is corrupt."""
    try:
        with Image.open(io.BytesIO(data), formats=_RASTER_FORMATS) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return np.asarray(img, dtype=np.uint16)
            if img.mode not in ("L", "RGB", "RGBA", "LA"):
                img = img.convert("RGBA" if "A" in img.mode else "RGB")
            return np.asarray(img)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes
        raise DataError(
            f"corrupt or unsupported {fmt} file: could not decode pixels", path=name
        ) from exc


def _png_16_bit(
    arr: np.ndarray, sbit: int | None, depth: PngBitDepth, notes: list[str], name: str
) -> np.ndarray:
    """16-bit PNG samples to [0, 1] by their significant bits (the rule in the README).

    sBIT = b and every value below 2^b: b-bit values stored unshifted, divided by 2^b - 1. sBIT
    with larger values: scaled up to 16 bits as the PNG spec says, so / 65535. No sBIT: the
    --png-bit-depth given; `auto` reads a maximum below 4096 as 12-bit (CR/DX exports), warned.
    """
    peak = int(arr.max())
    if sbit is not None and 1 <= sbit < 16:
        bits = sbit if peak < 2**sbit else 16
    elif depth != "auto":
        bits = int(depth)
        if peak >= 2**bits:
            raise DataError(
                f"--png-bit-depth {bits} but the PNG holds values up to {peak} "
                f"(over {2**bits - 1})",
                path=name,
            )
    elif peak < 4096:
        bits = 12
        notes.append(
            f"16-bit PNG without an sBIT chunk whose values stay below 4096 (maximum {peak}): "
            "read as 12-bit data (divided by 4095); pass --png-bit-depth 16 if it really is a "
            "dark 16-bit image"
        )
    else:
        bits = 16
    if bits == 16:
        return arr
    return arr.astype(np.float32) / np.float32(2**bits - 1)


def _raster_header(data: bytes, name: str) -> tuple[int, int, str, int, int]:
    """(width, height, format, EXIF orientation, bytes of samples) without decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_RASTER_FORMATS) as header:
                width, height = header.size
                fmt = str(header.format)
                orientation = _exif_orientation(header) if fmt in ("JPEG", "MPO") else 1
                sample_bytes = 2 if header.mode.startswith("I;16") else 1
                raw = width * height * len(header.getbands()) * sample_bytes
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large, refused before decoding: {exc}", path=name) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure means unreadable
        raise DataError(
            "not a readable image (expected PNG, JPEG, BMP, TIFF or DICOM)", path=name
        ) from exc
    return width, height, fmt, orientation, raw


def _orientation_from_exif(block: bytes) -> int:
    """Orientation from a PNG eXIf chunk (the same TIFF-structured block as JPEG's APP1)."""
    try:
        exif = Image.Exif()
        exif.load(block)
        value = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the picture
        return 1
    return value if value in range(1, 9) else 1


def _exif_orientation(header: Image.Image) -> int:
    try:
        value = header.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the picture
        return 1
    return value if value in range(1, 9) else 1


def _jpeg_truncated(data: bytes) -> bool:
    """True when no end-of-image marker follows the last start-of-scan (a cut-off download).

    Older OpenCV builds return a half-grey picture for such files instead of failing.
    """
    last_scan = data.rfind(b"\xff\xda")
    return last_scan == -1 or data.find(b"\xff\xd9", last_scan) == -1


def _apply_exif_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Phone photos of films store rotation in EXIF; OpenCV's UNCHANGED mode ignores it."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: np.rot90(a, 2),
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return arr if op is None else op(arr)
