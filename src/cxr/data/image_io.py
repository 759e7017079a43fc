"""Decode one image file (or uploaded bytes) to the intensity contract in `cxr.data.table`.

Every format goes through `to_unit_grey`, so the scaling rule (uint8 / 255, uint16 / 65535, DICOM
after its own LUTs then min-max) lives in one place. Sizes are checked from the header before any
pixel is decoded, so a small file that claims to be huge (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cxr.errors import DataError, TooLarge

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
_RASTER_FORMATS = ["PNG", "JPEG", "BMP", "TIFF"]  # PIL plugins allowed to read headers
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cv2.cvtColor


def decode_image(path: str | Path, max_pixels: int = 100_000_000) -> np.ndarray:
    """Pixels of an image file as a 2-D float32 array in [0, 1]; DataError names what is wrong."""
    path = Path(path)
    if not path.exists():
        raise DataError("image file not found", path=str(path))
    if not path.is_file():
        raise DataError("not a file (expected an image)", path=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from exc
    return decode_bytes(data, name=str(path), max_pixels=max_pixels)


def decode_bytes(data: bytes, name: str = "upload", max_pixels: int = 100_000_000) -> np.ndarray:
    """Same as `decode_image` for bytes held in memory (uploads); nothing is written to disk."""
    if not data:
        raise DataError("empty file (0 bytes), not an image", path=name)
    if _is_dicom(data, name):
        return _decode_dicom(data, name, max_pixels)
    return _decode_raster(data, name, max_pixels)


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


def _is_dicom(data: bytes, name: str) -> bool:
    return Path(name).suffix.lower() in DICOM_EXTENSIONS or data[128:132] == b"DICM"


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise DataError(f"zero-size image ({width} x {height})", path=name)
    if width * height > max_pixels:
        raise TooLarge(
            f"image is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (refused before decoding)",
            path=name,
        )


def _decode_raster(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """PNG / JPEG / BMP / TIFF: PIL reads only the header (size, EXIF), OpenCV decodes.

    OpenCV with IMREAD_UNCHANGED keeps 16-bit samples that PIL would squash or widen.
    """
    width, height, fmt, orientation = _raster_header(data, name)
    _check_size(width, height, max_pixels, name)
    if fmt in ("JPEG", "MPO") and _jpeg_truncated(data):
        raise DataError("corrupt JPEG: the file ends before the image data does", path=name)
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DataError(f"corrupt or unsupported {fmt} file: {exc}", path=name) from exc
    if arr is None:
        raise DataError(f"corrupt or unsupported {fmt} file: could not decode pixels", path=name)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., 2::-1]  # OpenCV's BGR(A) to RGB; alpha dropped
    return to_unit_grey(_apply_exif_orientation(arr, orientation), source=name)


def _raster_header(data: bytes, name: str) -> tuple[int, int, str, int]:
    """(width, height, format, EXIF orientation) without decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_RASTER_FORMATS) as header:
                width, height = header.size
                fmt = str(header.format)
                orientation = _exif_orientation(header) if fmt in ("JPEG", "MPO") else 1
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large, refused before decoding: {exc}", path=name) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure means unreadable
        raise DataError(
            "not a readable image (expected PNG, JPEG, BMP, TIFF or DICOM)", path=name
        ) from exc
    return width, height, fmt, orientation


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


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Modality LUT (rescale), then VOI LUT or window, MONOCHROME1 inverted, min-max to [0, 1]."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
        has_pixels = "PixelData" in ds
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure means unreadable
        raise DataError(f"not a readable DICOM file: {exc}", path=name) from exc
    if not has_pixels:
        raise DataError("DICOM file has no pixel data (PixelData element missing)", path=name)
    if frames > 1:
        raise DataError(
            f"multi-frame DICOM ({frames} frames) is not supported; export one frame",
            path=name,
        )
    _check_size(columns, rows, max_pixels, name)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad/compressed data
        raise DataError(
            f"cannot decode DICOM pixels ({exc}); compressed transfer syntaxes may need "
            "pylibjpeg or gdcm installed",
            path=name,
        ) from exc
    if arr.ndim == 3:  # colour DICOM (pixel_array gives RGB): luminance; grey LUTs don't apply
        out = arr[..., :3].astype(np.float64) @ _LUMA.astype(np.float64)
    else:
        try:
            out = apply_voi_lut(apply_modality_lut(arr, ds), ds).astype(np.float64)
        except Exception as exc:  # noqa: BLE001 - malformed LUT / window elements
            raise DataError(f"cannot apply the DICOM rescale / VOI LUT: {exc}", path=name) from exc
    if not np.isfinite(out).all():
        raise DataError("DICOM pixels include NaN or infinite values", path=name)
    out = _min_max(out)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        out = 1.0 - out  # MONOCHROME1 stores air bright; the contract is air dark
    return np.ascontiguousarray(out, dtype=np.float32)


def _min_max(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:  # a flat image carries no contrast; zeros rather than a division by zero
        return np.zeros(arr.shape, dtype=np.float64)
    return (arr - lo) / (hi - lo)
