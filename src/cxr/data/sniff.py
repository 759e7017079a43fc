"""What a file is, from its first bytes: the content decides the decoder, never the extension.

PACS exports and DICOMDIR trees name files `IM000000` or by UID, without an extension, and a PNG
renamed `x.dcm` is still a PNG. Folder readers and `cxr predict FOLDER` use `sniff_path` to take
every image in, and to say why each other file was left out.
"""

from __future__ import annotations

from pathlib import Path

from cxr.errors import DataError, TooLarge

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
_HEAD = 132  # enough for the DICOM preamble + "DICM" and every raster signature

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff_bytes(head: bytes, name: str = "") -> str | None:
    """ "dicom", "png", "jpeg", "bmp", "tiff", or None when the bytes are none of these.

    A DICOM file has "DICM" after a 128-byte preamble; older exports without file meta have no
    marker at all, so a file named *.dcm that no raster signature matches is taken as DICOM and
    left to the DICOM parser to accept or refuse.
    """
    if head[128:132] == b"DICM":
        return "dicom"
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    if Path(name).suffix.lower() in DICOM_EXTENSIONS or _looks_like_bare_dicom(head):
        return "dicom"
    return None


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set with no preamble starts with a group 0x0008 (or 0x0002) element."""
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    return group in (0x0002, 0x0008) and element < 0x0100


def sniff_path(path: str | Path) -> str | None:
    """sniff_bytes on a file's first bytes; None for unreadable files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD)
    except OSError:
        return None
    return sniff_bytes(head, str(path))


def is_image_file(path: str | Path) -> bool:
    """An image by its extension, or (extensionless or unknown suffix) by its content.

    A DICOMDIR is the index of a DICOM media tree, never an image: its pixels are in the files
    it lists, which are taken in themselves.
    """
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    return sniff_path(path) is not None


def skip_reason(path: str | Path) -> str:
    """Why a file was not taken as an image, for the folder readers' skipped lists."""
    if Path(path).name.upper() == "DICOMDIR":
        return "DICOMDIR index of a DICOM media tree (no pixels; its images are read themselves)"
    return (
        f"not an image file (extension '{Path(path).suffix}', and its content is not PNG, JPEG, "
        "BMP, TIFF or DICOM)"
    )


def list_images(root: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every image under `root` (recursively, sorted; `root` itself if a file), and every other
    visible file with the reason it is not taken, so a folder's summary accounts for each file."""
    root = Path(root)
    if root.is_file():
        return [root], []
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if is_image_file(path):
            images.append(path)
        else:
            skipped.append((path, skip_reason(path)))
    return images, skipped


def check_pixel_count(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse an image from its header, before decoding: zero-size, or over `max_pixels`."""
    if width <= 0 or height <= 0:
        raise DataError(f"zero-size image ({width} x {height})", path=name)
    if width * height > max_pixels:
        raise TooLarge(
            f"image is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (refused before decoding)",
            path=name,
        )
