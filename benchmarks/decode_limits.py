"""What hostile files cost the decoder now: each is refused from its headers, before the big
allocation or the long loop that the issue measured.

- a Deflated DICOM that claims 256 x 256 pixels and inflates to about 3 GB (built by streaming
  zeros through zlib, so this script never holds the 3 GB either);
- a 31 MB PNG of 2.6 million empty chunks (PIL's own header read walks them all; timed too);
- eight 6300 x 6300 16-bit RGBA PNG headers (under 40 Mpx, but 318 MB of samples each).

Each refusal is timed, with the process's peak RSS before and after (ru_maxrss).

    .venv/bin/python benchmarks/decode_limits.py [--gigabytes 3.1]
"""

from __future__ import annotations

import argparse
import io
import resource
import struct
import time
import zlib

from cxr.data.image_io import decode_bytes
from cxr.errors import DataError


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def deflate_bomb(gigabytes: float) -> bytes:
    """Preamble + file meta (Deflated) + a deflated data set whose PixelData is mostly zeros."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns = "DX", 256, 256
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body = pydicom.filebase.DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True  # the inflated form
    pydicom.filewriter.write_dataset(body, ds)
    size = int(gigabytes * 1e9) // 2 * 2
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head)]
    zeros = bytes(64 << 20)
    for _ in range(size // len(zeros)):
        parts.append(deflater.compress(zeros))
    parts.append(deflater.compress(bytes(size % len(zeros))))
    parts.append(deflater.flush())
    out = pydicom.filebase.DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + b"".join(parts)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunk_bomb(n: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * (65 * 64)))
    empty = png_chunk(b"prVt", b"")
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + empty * n + idat + png_chunk(b"IEND", b"")
    )


def rgba16_header() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 6300, 6300, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def refuse(label: str, data: bytes, name: str, repeat: int = 1) -> None:
    before = peak_mb()
    tick = time.perf_counter()
    for _ in range(repeat):
        try:
            decode_bytes(data, name, max_pixels=40_000_000)
            message = "DECODED (not refused)"
        except DataError as exc:
            message = str(exc)
    seconds = time.perf_counter() - tick
    print(
        f"{label}: {len(data) / 1e6:.1f} MB file x{repeat}, refused in {seconds:.3f} s, "
        f"peak RSS {before:.0f} -> {peak_mb():.0f} MB"
    )
    print(f"  {message[:160]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=3.1, help="inflated size of the bomb")
    args = parser.parse_args()
    bomb = deflate_bomb(args.gigabytes)
    refuse(f"Deflated DICOM, 256 x 256 claimed, {args.gigabytes} GB inflated", bomb, "bomb.dcm")
    chunks = chunk_bomb(2_600_000)
    refuse("PNG of 2.6 M empty chunks", chunks, "chunks.png")
    from PIL import Image

    tick = time.perf_counter()
    with Image.open(io.BytesIO(chunks)):
        pass
    print(f"  (for comparison, PIL's Image.open alone on it: {time.perf_counter() - tick:.1f} s)")
    refuse("6300 x 6300 16-bit RGBA PNG header", rgba16_header(), "rgba16.png", repeat=8)


if __name__ == "__main__":
    main()
