"""The one data contract every reader returns: an `ImageTable`.

Intensity contract (every reader, every format): `load_image(table, i)` returns a 2-D float32
array in [0, 1], display orientation (air dark, bone bright, i.e. DICOM MONOCHROME2), scaled by
the stored bit depth (8-bit / 255, 16-bit / 65535; DICOM after rescale and VOI LUT/window,
min-max to [0, 1]). Colour is reduced to luminance. Nothing downstream guesses the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Task = Literal["multilabel", "multiclass"]


@dataclass
class ImageTable:
    """Images with their labels, patients and (optionally) an official split.

    keys: a file path per image; for in-memory sources (MedMNIST) a stable name such as
        "pneumoniamnist.npz#train/17", with the pixels in `arrays`.
    labels: (N, K) float32. multilabel: 1/0 per finding, NaN where unknown (masked in the loss).
        multiclass: one-hot rows.
    findings: K names (the classes, for multiclass).
    patient_ids: one per image; splits never put one patient on both sides.
    official_split: "train" / "val" / "test" per image where the dataset defines it, else None.
    meta: optional per-image columns (sex, age, view) for subgroup analysis.
    skipped: what a reader left out under skip_bad, one entry per input naming the file (and CSV
        row) and why, so a run can report what it did not use.
    """

    keys: list[str]
    labels: np.ndarray
    findings: list[str]
    task: Task
    patient_ids: list[str]
    official_split: list[str] | None = None
    meta: dict[str, list] = field(default_factory=dict)
    arrays: np.ndarray | None = None  # (N, H, W) uint8/uint16 for in-memory sources
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # inputs left out under skip_bad

    def __post_init__(self) -> None:
        n = len(self.keys)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if self.labels.shape != (n, len(self.findings)):
            raise ValueError(
                f"labels shape {self.labels.shape} does not match {n} images x "
                f"{len(self.findings)} findings"
            )
        if len(self.patient_ids) != n:
            raise ValueError(f"{len(self.patient_ids)} patient ids for {n} images")
        if self.official_split is not None and len(self.official_split) != n:
            raise ValueError(f"{len(self.official_split)} split entries for {n} images")

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: np.ndarray | list[int]) -> ImageTable:
        index = np.asarray(index, dtype=np.int64)
        return ImageTable(
            keys=[self.keys[i] for i in index],
            labels=self.labels[index],
            findings=list(self.findings),
            task=self.task,
            patient_ids=[self.patient_ids[i] for i in index],
            official_split=None
            if self.official_split is None
            else [self.official_split[i] for i in index],
            meta={k: [v[i] for i in index] for k, v in self.meta.items()},
            arrays=None if self.arrays is None else self.arrays[index],
            source=self.source,
            skipped=list(self.skipped),
        )

    def class_index(self) -> np.ndarray:
        """Integer class per image (multiclass only)."""
        if self.task != "multiclass":
            raise ValueError("class_index() is for multiclass tables")
        return self.labels.argmax(axis=1)


def load_image(table: ImageTable, i: int) -> np.ndarray:
    """Decoded pixels of image i under the intensity contract (float32, [0, 1], 2-D)."""
    if table.arrays is not None:
        from cxr.data.image_io import to_unit_grey

        return to_unit_grey(table.arrays[i], source=table.keys[i])
    from cxr.data.image_io import decode_image

    return decode_image(table.keys[i])
