"""The few DICOM header fields a reader checks before trusting a chest X-ray model's answer,
and the plain refusal for files that are not projection radiographs of the chest.

Only technical fields are read (never names, IDs, dates or institutions), so the answer can be
shown in the browser without echoing a patient identifier.
"""

from __future__ import annotations

from cxr.data.modality import NON_RADIOGRAPH_NAMES, PLAIN_RADIOGRAPHS, is_radiograph_modality

CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "TORSO", ""}

_FIELDS = {
    "modality": "Modality",
    "view_position": "ViewPosition",
    "body_part": "BodyPartExamined",
    "rows": "Rows",
    "columns": "Columns",
    "bits_stored": "BitsStored",
    "bits_allocated": "BitsAllocated",
    "photometric_interpretation": "PhotometricInterpretation",
}


def is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def dicom_header(data: bytes, name: str = "upload", max_pixels: int = 100_000_000) -> dict:
    """Technical header fields of DICOM bytes (no identifiers); DataError when unreadable.

    Read by the decoder's own reader, so a Deflated data set is inflated under the cap its
    header allows (pydicom's dcmread inflates all of it, even with stop_before_pixels).
    """
    from cxr.data.dicom import read_dataset

    ds = read_dataset(data, name, max_pixels)
    header: dict = {}
    for key, keyword in _FIELDS.items():
        value = ds.get(keyword)
        if value is None or value == "":
            header[key] = None
        elif isinstance(value, int) or key in ("rows", "columns", "bits_stored", "bits_allocated"):
            header[key] = int(value)
        else:
            header[key] = str(value).strip()
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    header["transfer_syntax"] = syntax.name if syntax is not None else None
    return header


def chest_radiograph_problem(header: dict) -> tuple[str | None, str | None]:
    """(refusal, warning): why this DICOM is not a chest radiograph, or why it may not be."""
    modality = (header.get("modality") or "").upper()
    if not is_radiograph_modality(modality):
        kind = NON_RADIOGRAPH_NAMES.get(modality, f"a {modality} object")
        return (
            f"this DICOM is {kind} (Modality {modality}), not a chest "
            "radiograph; the model was trained on chest X-rays only and its scores on it would "
            "be meaningless",
            None,
        )
    part = (header.get("body_part") or "").upper()
    if part not in CHEST_PARTS:
        return None, (
            f"the DICOM header says the body part examined is {part}, not the chest; the model "
            "was trained on chest X-rays only, so treat these scores with suspicion"
        )
    if modality and modality not in PLAIN_RADIOGRAPHS:
        return None, (
            f"the DICOM modality is {modality}, not CR or DX (a radiograph); check that this is "
            "a chest X-ray"
        )
    return None, None
