"""DICOM to the intensity contract: what hospitals export, or a refusal that says why.

Order of work, cheapest first, so hostile or unusable files cost little:
1. header only (Deflated data sets are inflated under a cap derived from their own header);
2. refuse by header: no pixels, a modality that is not a radiograph, too many pixels, a frame
   that does not exist, an encapsulated codestream larger than Rows x Columns claims;
3. decode one frame (pydicom with the pylibjpeg plugins: JPEG baseline/extended/lossless,
   JPEG-LS, JPEG 2000, RLE);
4. grey: Modality LUT (rescale), then VOI LUT or window (a degenerate one falls back to the full
   stored range, with a warning), min-max to [0, 1], inverted for MONOCHROME1 or a Presentation
   LUT Shape of INVERSE; colour (RGB, YBR, PALETTE COLOR through its palette): luminance, plus
   an RGB copy for the colour check.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field

import numpy as np

from cxr.data.modality import is_radiograph_modality
from cxr.data.sniff import check_pixel_count
from cxr.errors import DataError, TooLarge

# Radiographs: CR/DX/DR (digital), RG (digitised film), OT (secondary capture of a radiograph).
FRONTAL_VIEWS = frozenset({"PA", "AP", ""})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", ""})
INSTALL_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"
IDENTIFIER_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
_HEADER_PROBE = 1 << 20  # inflated bytes read first to find Rows / Columns in a Deflated file
_INFLATE_SLACK = 16 << 20  # room for non-pixel elements (overlays, icons) in a Deflated file
_SATURATED = 0.001  # a window leaving fewer pixels than this between its floor and ceiling


@dataclass
class DicomImage:
    image: np.ndarray  # the contract: float32, 2-D, [0, 1]
    meta: dict[str, object]
    warnings: list[str] = field(default_factory=list)
    colour: np.ndarray | None = None  # RGB uint8 for colour sources, for the colour check


def decode_dicom(
    data: bytes,
    name: str,
    max_pixels: int,
    frame: int = 0,
    allow_modality: bool = False,
    keep_identifiers: bool = False,
) -> DicomImage:
    """One frame of a DICOM file to the contract; DataError names the file and the cause."""
    from pydicom.pixels import apply_color_lut, pixel_array

    ds = read_dataset(data, name, max_pixels)
    meta = dicom_metadata(ds, keep_identifiers)
    warnings = _view_warnings(meta)
    try:
        _check_header(ds, name, max_pixels, frame, allow_modality)
    except (TypeError, ValueError) as exc:  # e.g. Rows stored as text "1A"
        raise DataError(f"malformed DICOM header: {exc}", path=name) from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        arr = pixel_array(ds, index=frame)
    except Exception as exc:  # noqa: BLE001 - pydicom and its plugins raise many types
        raise DataError(_decode_failure(ds, exc), path=name) from exc
    if arr.ndim == 3 and photometric in ("", "MONOCHROME1", "MONOCHROME2") and arr.shape[2] == 1:
        arr = arr[..., 0]
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001 - malformed palette elements
            raise DataError(f"cannot apply the DICOM colour palette: {exc}", path=name) from exc
    if arr.ndim == 3:
        image, colour = _colour_to_grey(arr, ds, name)
        return DicomImage(image, meta, warnings, colour)
    image = _grey(arr, ds, name, warnings)
    return DicomImage(image, meta, warnings)


def dicom_metadata(ds, keep_identifiers: bool = False) -> dict[str, object]:
    """Modality, body part, view, sex and age (years) from the header; identifiers only if asked."""
    meta: dict[str, object] = {
        "modality": str(ds.get("Modality", "") or "").upper(),
        "body_part": str(ds.get("BodyPartExamined", "") or "").upper(),
        "view": str(ds.get("ViewPosition", "") or "").upper(),
        "sex": str(ds.get("PatientSex", "") or "").upper(),
        "age": _age_years(str(ds.get("PatientAge", "") or "")),
    }
    if keep_identifiers:
        for keyword in IDENTIFIER_KEYWORDS:
            meta[keyword] = str(ds.get(keyword, "") or "")
    return meta


def read_dicom_metadata(path, keep_identifiers: bool = False) -> dict[str, object]:
    """The header fields of `dicom_metadata` for a file, without reading its pixels."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes
        raise DataError(f"not a readable DICOM file: {exc}", path=str(path)) from exc
    return dicom_metadata(ds, keep_identifiers)


def dicom_table_meta(keys: list[str]) -> dict[str, list]:
    """Table columns (sex, age, view, body_part, modality) from the DICOM headers among `keys`,
    None for other files; {} when there is no DICOM, so other readers' tables are unchanged."""
    from cxr.data.sniff import sniff_path

    raster = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # skip opening these
    rows: list[dict[str, object] | None] = []
    for key in keys:
        dicom = not key.lower().endswith(raster) and sniff_path(key) == "dicom"
        rows.append(read_dicom_metadata(key) if dicom else None)
    if all(row is None for row in rows):
        return {}
    columns = ("sex", "age", "view", "body_part", "modality")
    return {c: [None if r is None or r[c] == "" else r[c] for r in rows] for c in columns}


def _age_years(text: str) -> float | None:
    """DICOM Age String ("058Y", "006M", "003W", "012D") in years; None if absent or malformed."""
    text = text.strip().upper()
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if len(text) < 2 or text[-1] not in per_year or not text[:-1].isdigit():
        return None
    return round(int(text[:-1]) / per_year[text[-1]], 3)


def _view_warnings(meta: dict[str, object]) -> list[str]:
    warnings = []
    if meta["body_part"] not in CHEST_BODY_PARTS:
        warnings.append(
            f"DICOM BodyPartExamined is {meta['body_part']}, not CHEST: the model reads chest "
            "X-rays only"
        )
    if meta["view"] not in FRONTAL_VIEWS:
        warnings.append(
            f"DICOM ViewPosition is {meta['view']}, not a frontal (PA/AP) view: the model was "
            "trained on frontal chest X-rays"
        )
    return warnings


# --- reading the header --------------------------------------------------------------------------


def read_dataset(data: bytes, name: str, max_pixels: int):
    """The data set, with a Transfer Syntax UID set; Deflated ones inflated under a cap."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    try:
        if data[128:132] == b"DICM":
            fp = io.BytesIO(data)
            read_preamble(fp, False)
            file_meta = _read_file_meta_info(fp)
            if file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                inflated = _inflate_bounded(data[fp.tell() :], name, max_pixels)
                ds = pydicom.dcmread(io.BytesIO(inflated), force=True)
                file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # pixels are native
                ds.file_meta = file_meta
                return ds
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure means unreadable
        raise DataError(f"not a readable DICOM file: {exc}", path=name) from exc
    if len(ds) == 0:
        raise DataError("not a readable DICOM file: no data elements", path=name)
    if not getattr(ds, "file_meta", None):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        # Older CR exports have no file meta: the data set's own encoding is the answer, as in
        # dcmtk and pydicom's force reading (implicit VR little endian for nearly all of them).
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit in (None, True):
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ExplicitVRLittleEndian if little in (None, True) else ExplicitVRBigEndian
            )
    return ds


def _inflate_bounded(raw: bytes, name: str, max_pixels: int) -> bytes:
    """Inflate a Deflated data set, never past what its own header says its pixels need."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(raw, _HEADER_PROBE)
    except zlib.error as exc:
        raise DataError(f"corrupt Deflated DICOM: {exc}", path=name) from exc
    limit = _pixel_bytes_from_header(head, name, max_pixels) + _INFLATE_SLACK
    chunks, total = [head], len(head)
    try:
        while inflater.unconsumed_tail and total <= limit:
            chunk = inflater.decompress(inflater.unconsumed_tail, min(1 << 22, limit + 1 - total))
            chunks.append(chunk)
            total += len(chunk)
            if not chunk:
                break
    except zlib.error as exc:
        raise DataError(f"corrupt Deflated DICOM: {exc}", path=name) from exc
    if total > limit:
        raise TooLarge(
            f"Deflated DICOM inflates to over {limit:,} bytes, more than its header's "
            "Rows x Columns x frames needs (a decompression bomb); refused",
            path=name,
        )
    return b"".join(chunks)


def _pixel_bytes_from_header(head: bytes, name: str, max_pixels: int) -> int:
    """Rows x Columns x frames x samples x bytes from the first inflated bytes; size-checked."""
    from pydicom.filereader import read_dataset

    try:
        ds = read_dataset(
            io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag >= 0x7FE00000
        )
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except Exception:  # noqa: BLE001 - the header did not fit the probe: assume the largest
        return max_pixels * 2
    check_pixel_count(columns, rows, max_pixels, name)
    return rows * columns * max(frames, 1) * max(samples, 1) * max(1, -(-bits // 8))


def _check_header(ds, name: str, max_pixels: int, frame: int, allow_modality: bool) -> None:
    if "PixelData" not in ds:
        kind = "float " if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else ""
        raise DataError(
            f"DICOM file has no {kind}pixel data (PixelData element missing)"
            if not kind
            else "DICOM float pixel data (parametric maps) is not a radiograph",
            path=name,
        )
    modality = str(ds.get("Modality", "") or "").upper()
    if not is_radiograph_modality(modality) and not allow_modality:
        raise DataError(
            f"DICOM modality {modality} is not a radiograph (expected CR, DX, DR, RG or OT); "
            "pass --allow-modality (allow_modality: true) to read it anyway",
            path=name,
        )
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_pixel_count(columns, rows, max_pixels, name)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise DataError(
            f"frame {frame} asked for, but the DICOM file has {frames} frame(s) "
            f"(--frame takes 0 to {frames - 1})",
            path=name,
        )
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        _check_codestream(ds, name, frame, frames, rows, columns)


def _check_codestream(ds, name: str, frame: int, frames: int, rows: int, columns: int) -> None:
    """Refuse a compressed frame whose own header is larger than Rows x Columns says."""
    from pydicom.encaps import get_frame

    try:
        stream = get_frame(ds.PixelData, frame, number_of_frames=frames)
    except Exception as exc:  # noqa: BLE001 - broken encapsulation
        raise DataError(f"corrupt encapsulated DICOM pixel data: {exc}", path=name) from exc
    size = codestream_size(stream[:65536])
    if size is not None and (size[0] > columns or size[1] > rows):
        raise TooLarge(
            f"the compressed image inside is {size[0]} x {size[1]}, larger than the header's "
            f"{columns} x {rows}; refused before decoding",
            path=name,
        )


def codestream_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ marker; None if not found."""
    siz = head.find(b"\xff\x4f\xff\x51")
    if siz != -1 and len(head) >= siz + 24:
        x, y, x0, y0 = np.frombuffer(head[siz + 8 : siz + 24], dtype=">u4").tolist()
        return x - x0, y - y0
    if not head.startswith(b"\xff\xd8"):
        return None
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        if marker in sof and pos + 9 <= len(head):
            height = int.from_bytes(head[pos + 5 : pos + 7], "big")
            width = int.from_bytes(head[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + length
    return None


def _decode_failure(ds, exc: Exception) -> str:
    """Name the cause; the install hint only where a missing decoder plugin is the cause."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"DICOM transfer syntax {syntax.name} ({syntax}) is not supported"
    if not decoder.is_available:
        return (
            f"cannot decode DICOM pixels: no decoder for {syntax.name} is installed; install "
            f"one with `{INSTALL_DECODERS}`"
        )
    return f"cannot decode DICOM pixels ({syntax.name}): {exc}"


# --- pixels to the contract ----------------------------------------------------------------------


def _grey(arr: np.ndarray, ds, name: str, warnings: list[str]) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    try:
        stored = apply_modality_lut(arr, ds).astype(np.float64)
    except Exception as exc:  # noqa: BLE001 - malformed rescale / modality LUT elements
        raise DataError(f"cannot apply the DICOM rescale / modality LUT: {exc}", path=name) from exc
    if not np.isfinite(stored).all():
        raise DataError("DICOM pixels include NaN or infinite values", path=name)
    if float(stored.max()) <= float(stored.min()):
        raise DataError(
            "blank image after windowing: every stored pixel has the same value "
            f"({float(stored.min()):g}), so there is nothing to predict on",
            path=name,
        )
    out = _voi(stored, ds, name, warnings)
    out = min_max(out)
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" or shape == "INVERSE":
        out = 1.0 - out  # air stored bright; the contract is air dark (one inversion, not two)
    return np.ascontiguousarray(out, dtype=np.float32)


def _voi(stored: np.ndarray, ds, name: str, warnings: list[str]) -> np.ndarray:
    """The VOI LUT or window, unless it is degenerate: then the full stored range, warned."""
    from pydicom.pixels import apply_voi_lut

    reason = _degenerate_voi(ds)
    if reason is None and ("VOILUTSequence" in ds or "WindowWidth" in ds):
        try:
            out = np.asarray(apply_voi_lut(stored, ds), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - malformed LUT / window elements
            reason = f"its VOI LUT / window cannot be applied ({exc})"
        else:
            lo, hi = float(out.min()), float(out.max())
            inside = float(np.mean((out > lo) & (out < hi))) if hi > lo else 0.0
            if inside >= _SATURATED:
                return out
            reason = "its VOI window saturates every stored value (the image would be flat)"
    if reason is not None:
        warnings.append(f"DICOM {reason}; used the full stored range instead")
    return stored


def _degenerate_voi(ds) -> str | None:
    if "VOILUTSequence" in ds:
        items = ds.VOILUTSequence
        item = items[0] if len(items) else None
        descriptor = item.get("LUTDescriptor") if item is not None else None
        lut = item.get("LUTData") if item is not None else None
        if not descriptor or lut is None or len(lut) == 0:
            return "VOI LUT Sequence is empty (no LUT Descriptor or LUT Data)"
        return None
    if "WindowWidth" in ds:
        width = ds.WindowWidth
        first = width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width
        try:
            if float(first) < 1:
                return f"Window Width is {float(first):g} (below 1)"
        except (TypeError, ValueError):
            return f"Window Width {first!r} is not a number"
    return None


def _colour_to_grey(arr: np.ndarray, ds, name: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB (pydicom converts YBR; palettes were applied) to luminance, plus a uint8 RGB copy."""
    rgb = arr[..., :3]
    if rgb.dtype == np.uint8:
        unit = rgb.astype(np.float64) / 255.0
    elif np.issubdtype(rgb.dtype, np.integer):
        bits = int(ds.get("BitsStored", 0) or 0)
        if "RedPaletteColorLookupTableDescriptor" in ds:
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        top = float(2**bits - 1) if 0 < bits <= 32 else float(max(rgb.max(), 1))
        top = max(top, float(rgb.max()))
        unit = rgb.astype(np.float64) / top
    else:
        raise DataError(f"unsupported colour DICOM pixel type {rgb.dtype}", path=name)
    luma = unit @ np.array([0.299, 0.587, 0.114])
    if float(luma.max()) <= float(luma.min()):
        raise DataError("blank image: every pixel has the same colour", path=name)
    colour = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.clip(luma, 0.0, 1.0), dtype=np.float32), colour


def min_max(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float64)
    return (arr - lo) / (hi - lo)
