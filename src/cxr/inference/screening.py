"""Is this upload a chest radiograph the model may answer? The one path for `cxr serve`,
`cxr predict` and `cxr explain`: decode (size and pixel limits) -> refuse colour photographs ->
the run's out-of-distribution gate (when the run has one). A refusal is always `NotAChestXray`
(cxr.errors), carrying the gate's verdict when the gate ran. Nothing here writes to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.dicom_header import chest_radiograph_problem, dicom_header, is_dicom
from cxr.data.image_io import decode_bytes
from cxr.errors import NotAChestXray
from cxr.ood.gate import GATE_FILE, OodGate, OodResult, colour_sample

__all__ = [
    "COLOUR_FRACTION",
    "Decoded",
    "check_colour",
    "coloured_fraction",
    "decode_upload",
    "gate_verdict",
    "load_gate",
    "ood_warning",
]

# Colour check: a chest X-ray stored as RGB has R = G = B up to compression noise (a few grey
# levels); a photograph has saturated pixels almost everywhere. A pixel counts as coloured when
# its channels differ by more than 40 of 255 levels, and an image is refused when over 15% of
# its pixels are coloured, so a small coloured ruler or annotation on a radiograph still passes.
COLOUR_LEVELS = 40
COLOUR_FRACTION = 0.15


@dataclass
class Decoded:
    image: np.ndarray  # float32 (H, W) in [0, 1]: the intensity contract
    colour: np.ndarray | None  # small RGB uint8 copy when the file stores colour, else None
    coloured_fraction: float  # share of clearly coloured pixels (0 for grey files)
    dicom: dict | None = None  # a DICOM's technical header fields (no identifiers)
    caution: str | None = None  # why the DICOM header doubts this is a chest radiograph


def decode_upload(data: bytes, name: str, max_pixels: int) -> Decoded:
    """decode_bytes (limits, DICOM, clear errors) plus a small colour copy for the checks; a
    DICOM whose header says CT, MR, US... is refused before its pixels are decoded."""
    header = caution = None
    if is_dicom(data):
        header = dicom_header(data, name)
        refusal, caution = chest_radiograph_problem(header)
        if refusal:
            raise NotAChestXray(refusal, path=name)
    image = decode_bytes(data, name=name, max_pixels=max_pixels)
    colour = colour_sample(data)
    fraction = 0.0 if colour is None else coloured_fraction(colour)
    return Decoded(image, colour, fraction, header, caution)


def coloured_fraction(rgb: np.ndarray) -> float:
    """Share of pixels whose channels differ by more than COLOUR_LEVELS of 255."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    return float(np.mean(spread > COLOUR_LEVELS))


def check_colour(decoded: Decoded, name: str) -> None:
    """Refuse a colour photograph before the model sees it (the one colour check)."""
    if decoded.coloured_fraction > COLOUR_FRACTION:
        raise NotAChestXray(
            f"this looks like a colour photograph ({decoded.coloured_fraction:.0%} of its "
            "pixels are clearly coloured), not a chest X-ray; upload the radiograph itself "
            "(DICOM, or a greyscale PNG/JPEG export)",
            path=name,
        )


def load_gate(run_dir: Path, run=None) -> tuple[OodGate | None, str]:
    """(gate, note): the run's OOD gate, or None and why not."""
    if not (Path(run_dir) / GATE_FILE).is_file():
        return None, f"none in this run (fit one with `cxr ood-fit --model {Path(run_dir).name}`)"
    gate = OodGate.load(run_dir, run=run)  # a broken gate file stops start-up: never ignored
    return gate, f"on ({gate.config.action}s when an image fails)"


def gate_verdict(result: OodResult, name: str) -> dict:
    """The gate's verdict as the API and the CSV report it; NotAChestXray when it refuses."""
    ood = {
        "checked": True,
        "ok": bool(result.ok),
        "score": _finite_or_none(result.score),
        "threshold": _finite_or_none(result.threshold),
        "reason": str(result.reason or ""),
        "action": str(result.action),
    }
    if result.checks:
        ood["checks"] = {
            check: {k: (_finite_or_none(v) if k in ("score", "limit") else v) for k, v in c.items()}
            for check, c in result.checks.items()
        }
    if not result.ok and result.action == "refuse":
        raise NotAChestXray(
            "the out-of-distribution check rejected this image as unlike the chest X-rays "
            f"the model was trained on ({ood['reason'] or 'score over threshold'}); "
            "predictions on it would be meaningless",
            path=name,
            ood=ood,
        )
    return ood


def ood_warning(ood: dict) -> str:
    """What a prediction carries when the gate is set to warn and the image failed it."""
    return (
        f"Out-of-distribution warning: {ood['reason']}. The model was not trained on "
        "images like this one; treat its output as meaningless."
    )


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
