"""PNG chunks read without decoding a pixel: size, bit depth, `sBIT` and `eXIf`.

One walk over the chunk list bounds the cost of a hostile file before any decoder sees it (a
30 MB PNG of millions of empty chunks kept a decoder busy for seconds), and finds the two chunks
the intensity contract needs: `sBIT` (how many of the 16 stored bits are significant) and `eXIf`
(orientation, as JPEG EXIF).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cxr.errors import DataError, TooLarge

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNKS = 20_000  # a 40 Mpx 16-bit image in 8 KiB IDAT chunks needs ~6,000
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    significant_bits: int | None  # from sBIT (the grey / first channel); None without one
    exif: bytes | None

    @property
    def channels(self) -> int:
        return _CHANNELS.get(self.colour_type, 4)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the decoded samples (what a decoder must allocate)."""
        return self.width * self.height * self.channels * max(1, self.bit_depth // 8)


def read_png_info(data: bytes, name: str, max_chunks: int = MAX_CHUNKS) -> PngInfo:
    """Walk the chunk list; DataError for a broken structure or too many chunks."""
    if not data.startswith(PNG_SIGNATURE):
        raise DataError("not a PNG file", path=name)
    pos, count = len(PNG_SIGNATURE), 0
    header: tuple[int, int, int, int] | None = None
    sbit: int | None = None
    exif: bytes | None = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        count += 1
        if count > max_chunks:
            raise TooLarge(
                f"PNG has over {max_chunks:,} chunks (refused before decoding: a real image "
                "needs far fewer)",
                path=name,
            )
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR" and length >= 13:
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            header = (width, height, depth, ctype)
        elif kind == b"sBIT" and length >= 1:
            sbit = body[0]
        elif kind == b"eXIf":
            exif = bytes(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise DataError("corrupt PNG: no IHDR header chunk", path=name)
    width, height, depth, ctype = header
    return PngInfo(width, height, depth, ctype, sbit, exif)
