"""Read a folder of class folders (`root/<CLASS>/`) or of split folders (`root/<split>/<CLASS>/`).

The second is the Kermany pediatric pneumonia layout (`chest_xray/{train,val,test}/<CLASS>/`),
whose file names carry the patient (`person1000_bacteria_2931.jpeg` -> `person1000`), so that
splits can keep a patient's images together.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cxr.data.dicom import dicom_table_meta
from cxr.data.sniff import is_image_file, skip_reason
from cxr.data.table import ImageTable
from cxr.errors import DataError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_ORDER = ("train", "val", "test")
_IGNORED_FOLDERS = {"__MACOSX"}  # macOS zip litter beside the real folders

_KERMANY_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)(?:_\d+)+$", re.IGNORECASE)
_KERMANY_IM = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE)


def read_folder(root: str | Path, skip_bad: bool = False) -> ImageTable:
    """One-hot multiclass table from class folders; findings are the sorted class names."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(
            "image folder not found (expected a folder of class folders)", path=str(root)
        )
    if not any(_visible(p) for p in root.iterdir()):
        raise DataError("the image folder is empty", path=str(root))
    root = _unwrap(root)
    skipped: list[str] = []
    subdirs = _subfolders(root)
    has_splits = any(d.name.lower() in SPLIT_NAMES for d in subdirs)
    split_dirs = _split_folders(root, subdirs) if has_splits else [("", root)]
    layout = [(split, folder, _class_folders(folder)) for split, folder in split_dirs]
    _check_same_classes(root, layout)
    classes = [c.name for c in layout[0][2]]

    if has_splits:
        _check_loose_images(root, skip_bad, skipped)
    keys: list[str] = []
    class_ids: list[int] = []
    split_of: list[str] = []
    for split, folder, class_dirs in layout:
        _check_loose_images(folder, skip_bad, skipped)
        for class_dir in class_dirs:
            for path in _image_files(class_dir, skip_bad, skipped):
                keys.append(str(path))
                class_ids.append(classes.index(class_dir.name))
                split_of.append(split)
    _check_every_class_has_images(root, classes, class_ids)

    parsed = [parse_kermany_name(Path(k).stem) for k in keys]
    labels = np.eye(len(classes), dtype=np.float32)[np.asarray(class_ids, dtype=np.int64)]
    return ImageTable(
        keys=keys,
        labels=labels,
        findings=classes,
        task="multiclass",
        patient_ids=[patient for patient, _ in parsed],
        official_split=split_of if has_splits else None,
        meta={"subtype": [subtype for _, subtype in parsed], **dicom_table_meta(keys)},
        source=str(root),
        skipped=skipped,
    )


def parse_kermany_name(stem: str) -> tuple[str, str]:
    """(patient id, pneumonia subtype) from a Kermany file stem; (stem, "") for other names."""
    match = _KERMANY_PERSON.match(stem)
    if match:
        return match.group(1), match.group(2).lower()
    match = _KERMANY_IM.match(stem)
    if match:
        return match.group(1), ""
    return stem, ""


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _IGNORED_FOLDERS


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _unwrap(root: Path) -> Path:
    """Step into a lone wrapper folder (`kermany-pneumonia/` -> `chest_xray/`), as unzipping leaves.

    Only when the lone folder itself holds folders, so a single class folder is still an error.
    """
    subdirs = _subfolders(root)
    files = [p for p in root.iterdir() if p.is_file() and _visible(p)]
    if len(subdirs) == 1 and not any(_is_image_name(p) for p in files):
        if subdirs[0].name.lower() not in SPLIT_NAMES and _subfolders(subdirs[0]):
            return subdirs[0]
    return root


def _split_folders(root: Path, subdirs: list[Path]) -> list[tuple[str, Path]]:
    others = [d.name for d in subdirs if d.name.lower() not in SPLIT_NAMES]
    if others:
        raise DataError(
            f"mixes split folders (train/val/test) with other folders {others}; expected either "
            "root/<CLASS>/<images> or root/<split>/<CLASS>/<images>",
            path=str(root),
        )
    splits: dict[str, Path] = {}
    for d in subdirs:
        split = SPLIT_NAMES[d.name.lower()]
        if split in splits:
            raise DataError(
                f"two folders for the '{split}' split: {splits[split].name}, {d.name}",
                path=str(root),
            )
        splits[split] = d
    return [(s, splits[s]) for s in _SPLIT_ORDER if s in splits]


def _class_folders(folder: Path) -> list[Path]:
    classes = _subfolders(folder)
    if len(classes) < 2:
        found = f"only '{classes[0].name}'" if classes else "none"
        raise DataError(
            f"need at least 2 class folders (e.g. NORMAL/ and PNEUMONIA/), found {found}",
            path=str(folder),
        )
    return classes


def _check_same_classes(root: Path, layout: list[tuple[str, Path, list[Path]]]) -> None:
    first_split, _, first_dirs = layout[0]
    first = sorted(c.name for c in first_dirs)
    for split, _, class_dirs in layout[1:]:
        classes = sorted(c.name for c in class_dirs)
        if classes != first:
            raise DataError(
                f"class folders differ between splits: {first_split} has {first}, "
                f"{split} has {classes}",
                path=str(root),
            )


def _is_image_name(path: Path) -> bool:
    """By extension, or by content for extensionless PACS files (`IM000000`, UID names)."""
    return is_image_file(path)


def _check_loose_images(folder: Path, skip_bad: bool, skipped: list[str]) -> None:
    """Images beside the class folders have no label; other files (README, CSV) are left alone."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and _visible(path) and _is_image_name(path):
            reason = "image outside any class folder, so it has no label"
            if not skip_bad:
                raise DataError(reason, path=str(path))
            skipped.append(f"{path} ({reason})")


def _image_files(folder: Path, skip_bad: bool, skipped: list[str]) -> list[Path]:
    """Every visible file under a class folder, nested folders included, sorted."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if _is_image_name(path):
            found.append(path)
            continue
        reason = skip_reason(path)
        if path.name.upper() == "DICOMDIR":  # a PACS tree's index: expected, never an error
            skipped.append(f"{path} ({reason})")
            continue
        if not skip_bad:
            raise DataError(reason + "; remove it or use skip_bad", path=str(path))
        skipped.append(f"{path} ({reason})")
    return found


def _check_every_class_has_images(root: Path, classes: list[str], class_ids: list[int]) -> None:
    if not class_ids:
        raise DataError("no images found in the class folders", path=str(root))
    counts = np.bincount(np.asarray(class_ids), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"class folder(s) with no images: {empty}", path=str(root))
