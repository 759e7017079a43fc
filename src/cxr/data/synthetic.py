"""SYNTHETIC chest-radiograph phantoms with planted findings: the offline demo data set.

These images are drawn by code (`cxr.data.phantom`), not taken from patients. They exist so
`cxr demo` can train and evaluate end to end with no download, and so Grad-CAM can be checked
against known lesion masks. This module writes them to disk with their labels, masks and
patients, and reads such a folder back as an ImageTable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr.data.phantom import (  # noqa: F401 - PREVALENCE: part of this API
    FINDINGS,
    GENERATOR_VERSION,
    PREVALENCE,
    make_phantom,
)
from cxr.data.table import ImageTable
from cxr.errors import DataError

_MARKER = "synthetic.json"
_OWN_FILES = ("images", "masks", "labels.csv", "README.txt", _MARKER)


# ---------------------------------------------------------------- data set on disk


def _marker(n: int, size: int, seed: int) -> dict:
    return {
        "generator": "cxr.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "size": size,
        "findings": list(FINDINGS),
        "synthetic": True,
        "complete": True,
    }


def write_synthetic_dataset(
    out_dir: str | Path, n: int = 600, size: int = 256, seed: int = 0, progress: bool = True
) -> Path:
    """Write n SYNTHETIC phantoms, their masks and labels.csv; reuse an identical earlier set."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out_dir)
    marker = _marker(n, size, seed)
    if out.exists() and not out.is_dir():
        raise DataError("is a file; expected a folder for the synthetic data set", path=str(out))
    if out.exists() and any(out.iterdir()):
        if _read_marker(out) is None:
            raise DataError(
                "refusing to overwrite a non-empty folder that is not a synthetic data set "
                f"(no {_MARKER} from cxr.data.synthetic); choose an empty or new folder",
                path=str(out),
            )
        if _read_marker(out) == marker and (out / "labels.csv").is_file():
            return out
        for name in _OWN_FILES:  # an older, different or unfinished synthetic set: ours
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    # Claim the folder first, so an interrupted run is recognised (and replaced) next time.
    (out / _MARKER).write_text(json.dumps({**marker, "complete": False}, indent=1))

    rows = []
    for i, patient, sex, age, view in _iterate(_patients(n, seed), progress):
        img, masks = make_phantom(np.random.default_rng([seed, i]), size)
        name = f"synth_{i:05d}"
        cv2.imwrite(str(out / "images" / f"{name}.png"), np.round(img * 255).astype(np.uint8))
        for f, m in masks.items():
            cv2.imwrite(str(out / "masks" / f"{name}_{f}.png"), m.astype(np.uint8) * 255)
        rows.append(
            {
                "Path": f"images/{name}.png",
                "Patient ID": patient,
                "Sex": sex,
                "Age": age,
                "View Position": view,
                **{f: int(f in masks) for f in FINDINGS},
            }
        )
    pd.DataFrame(rows).to_csv(out / "labels.csv", index=False)
    (out / "README.txt").write_text(
        "SYNTHETIC chest-radiograph phantoms drawn by cxr.data.synthetic. They are NOT images of\n"
        "real patients and carry no clinical meaning: patient ids, sex, age and view are random.\n"
        "masks/ holds where each planted finding was drawn. Regenerate with `cxr synth`.\n"
    )
    (out / _MARKER).write_text(json.dumps(marker, indent=1))
    return out


def _read_marker(folder: Path) -> dict | None:
    """The synthetic.json of a folder this module wrote, else None."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(marker, dict) and marker.get("generator") == "cxr.data.synthetic"
    return marker if ours else None


def _patients(n: int, seed: int) -> list[tuple[int, str, str, int, str]]:
    """About 1 image per patient, ~15% with two, so patient-level splits matter."""
    rng = np.random.default_rng([seed, 2**31])
    rows, p = [], 0
    while len(rows) < n:
        sex, age = str(rng.choice(["M", "F"])), int(rng.integers(18, 90))
        for _ in range(2 if rng.random() < 0.15 else 1):
            if len(rows) < n:
                view = "PA" if rng.random() < 0.85 else "AP"
                rows.append((len(rows), f"synth_p{p:05d}", sex, age, view))
        p += 1
    return rows


def _iterate(rows: list, progress: bool):
    if not progress:
        return rows
    from tqdm import tqdm

    return tqdm(rows, desc="synthetic phantoms", unit="img")


def read_synthetic(root: str | Path) -> ImageTable:
    """The table of a folder written by `write_synthetic_dataset`."""
    root = Path(root).resolve()
    csv = root / "labels.csv"
    if not csv.is_file():
        raise DataError(
            "labels.csv not found: not a synthetic data set (see `cxr synth`)", path=str(csv)
        )
    df = pd.read_csv(csv, dtype={"Patient ID": str, "Sex": str, "View Position": str})
    missing = [c for c in ("Path", "Patient ID", *FINDINGS) if c not in df.columns]
    if missing:
        raise DataError(f"missing columns {missing}", path=str(csv))
    return ImageTable(
        keys=[str(root / p) for p in df["Path"]],
        labels=df[list(FINDINGS)].to_numpy(np.float32),
        findings=list(FINDINGS),
        task="multilabel",
        patient_ids=df["Patient ID"].tolist(),
        meta={
            "sex": df["Sex"].tolist(),
            "age": df["Age"].tolist(),
            "view": df["View Position"].tolist(),
        },
        source="synthetic",
    )


def load_masks(root: str | Path, key: str) -> dict[str, np.ndarray]:
    """Bool masks of the findings planted in one image (key: its path or file name)."""
    stem = Path(key).stem
    masks = {}
    for f in FINDINGS:
        p = Path(root) / "masks" / f"{stem}_{f}.png"
        if p.is_file():
            m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise DataError("cannot decode mask", path=str(p))
            masks[f] = m > 127
    return masks
