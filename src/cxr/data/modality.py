"""Which DICOM modalities are read as radiographs: one list, for the decoder and the screening.

`cxr.data.dicom` refuses every other modality unless --allow-modality, and the upload screening
(`cxr.data.dicom_header.chest_radiograph_problem`, used by `cxr.inference.screening`) refuses it
by name from the header, before any pixel is decoded.
"""

from __future__ import annotations

__all__ = [
    "NON_RADIOGRAPH_NAMES",
    "PLAIN_RADIOGRAPHS",
    "RADIOGRAPH_MODALITIES",
    "is_radiograph_modality",
]

# The one list of DICOM modalities read as radiographs: the decoder (cxr.data.dicom) refuses
# every other one unless --allow-modality, and the upload screening (cxr.inference.screening)
# refuses it by name before any pixel is decoded. RG and OT ("other": often a secondary capture
# of a radiograph) are read with a warning.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT"})
PLAIN_RADIOGRAPHS = frozenset({"CR", "DX", "DR"})
# How a refusal names the common non-radiographs (an axial CT slice once scored
# "Consolidation 88%"); any other modality outside RADIOGRAPH_MODALITIES is refused too.
NON_RADIOGRAPH_NAMES = {
    "CT": "a CT slice",
    "MR": "an MR image",
    "US": "an ultrasound image",
    "NM": "a nuclear medicine image",
    "PT": "a PET image",
    "XA": "an angiogram",
    "MG": "a mammogram",
    "RTDOSE": "a radiotherapy dose grid",
    "SEG": "a segmentation",
}


def is_radiograph_modality(modality: str | None) -> bool:
    """True when the header names no modality or one of RADIOGRAPH_MODALITIES."""
    modality = (modality or "").strip().upper()
    return not modality or modality in RADIOGRAPH_MODALITIES
