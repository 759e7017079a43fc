"""Minimal CR DICOM files built in memory from real pixels, for the decoder and the web API."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom_dataset(
    stored: np.ndarray, bits_stored: int = 12, pixels: bool = True, **elements
) -> Dataset:
    """A CR DICOM of `stored` (uint16; (frames, H, W) for several) with any extra elements
    (e.g. RescaleSlope); without PixelData when `pixels` is False."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixels:
        ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def write_dicom(path: Path, stored: np.ndarray, bits_stored: int = 12, **elements) -> Path:
    dicom_dataset(stored, bits_stored, **elements).save_as(path, enforce_file_format=True)
    return path


def dicom_bytes(stored: np.ndarray, pixels: bool = True, **elements) -> bytes:
    buf = io.BytesIO()
    dicom_dataset(stored, pixels=pixels, **elements).save_as(buf, enforce_file_format=True)
    return buf.getvalue()
