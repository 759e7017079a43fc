"""Read a MedMNIST `.npz` (e.g. PneumoniaMNIST, ChestMNIST): small pre-split images held in memory.

MedMNIST ships no patient ids, so each image is treated as its own patient: a random re-split
could put one patient's images on both sides, so prefer the authors' splits (`official_split`).
The `medmnist` package is optional: only needed to download a flag that is not on disk yet, and
(if installed) to name the classes.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from cxr.data.nih import NIH_FINDINGS
from cxr.data.table import ImageTable
from cxr.errors import DataError, OfflineError

SPLITS = ("train", "val", "test")
DEFAULT_ROOT = Path("~/.medmnist")  # where the medmnist package keeps its downloads
_FLAG = re.compile(r"^([a-z]+mnist)(?:_(\d+))?$")  # "pneumoniamnist", "chestmnist_224"


def read_medmnist(path_or_flag: str | Path, root: str | Path | None = None) -> ImageTable:
    """Table of a MedMNIST `.npz` file, or of a flag looked up in `root` (downloaded if absent).

    A missing download raises OfflineError that says what to fetch and where to put it.
    """
    target = Path(path_or_flag).expanduser()
    if target.suffix.lower() == ".npz" or target.is_file():
        if not target.is_file():
            raise DataError("MedMNIST file not found", path=str(target))
        return _table_from_npz(target.absolute())
    flag = str(path_or_flag).strip().lower()
    if not is_medmnist_flag(flag):
        raise DataError(
            "neither a MedMNIST .npz file nor a MedMNIST flag such as 'pneumoniamnist'",
            path=str(path_or_flag),
        )
    folder = Path(root).expanduser() if root is not None else DEFAULT_ROOT.expanduser()
    npz = folder / f"{flag}.npz"
    if not npz.is_file():
        download_medmnist(flag, folder)
        if not npz.is_file():
            raise OfflineError(f"the MedMNIST download did not produce {npz}; {_manual(flag, npz)}")
    return _table_from_npz(npz.absolute())


def is_medmnist_flag(text: str) -> bool:
    """True for names like 'pneumoniamnist' or 'chestmnist_224' (2-D sets with a size)."""
    return _FLAG.match(text.strip().lower()) is not None


def download_medmnist(flag: str, root: Path) -> None:
    """Fetch `<flag>.npz` into root with the medmnist package; OfflineError when that fails."""
    npz = root / f"{flag}.npz"
    try:
        import medmnist
    except ImportError:
        raise OfflineError(
            f"MedMNIST '{flag}' is not at {npz} and the medmnist package is not installed "
            f"(pip install 'cxr[medmnist]' to download it); {_manual(flag, npz)}"
        ) from None
    base, size = _FLAG.match(flag).groups()
    info = medmnist.INFO.get(base)
    if info is None:
        raise DataError(f"unknown MedMNIST flag '{base}'; known: {sorted(medmnist.INFO)}")
    dataset_class = getattr(medmnist, info["python_class"])
    kwargs = {"size": int(size)} if size else {}
    try:
        root.mkdir(parents=True, exist_ok=True)
        dataset_class(split="train", download=True, root=str(root), **kwargs)
    except Exception as exc:  # noqa: BLE001 - any network/HTTP failure means: fetch it by hand
        raise OfflineError(
            f"could not download MedMNIST '{flag}' ({exc}); {_manual(flag, npz)}"
        ) from exc


def _manual(flag: str, npz: Path) -> str:
    return (
        f"without internet, download {flag}.npz from https://medmnist.com (Zenodo) on another "
        f"machine and put it at {npz}, or pass the file's path"
    )


def _table_from_npz(npz: Path) -> ImageTable:
    try:
        with np.load(npz, allow_pickle=False) as data:
            parts = {s: (data[f"{s}_images"], data[f"{s}_labels"]) for s in SPLITS if _has(data, s)}
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"not a readable MedMNIST .npz: {exc}", path=str(npz)) from exc
    if not parts:
        raise DataError(
            "no '<split>_images' / '<split>_labels' arrays (split = train, val, test)",
            path=str(npz),
        )
    for split, (images, labels) in parts.items():
        _check_arrays(images, labels, split, npz)
    images = np.concatenate([p[0] for p in parts.values()])
    if len(images) == 0:
        raise DataError("the .npz holds no images", path=str(npz))
    raw = np.concatenate([p[1].reshape(len(p[1]), -1) for p in parts.values()])
    base = _FLAG.sub(r"\1", npz.stem.lower())
    labels, findings, task = _labels(raw, base, npz)
    keys = [
        f"{npz.name}#{split}/{i}" for split, (imgs, _) in parts.items() for i in range(len(imgs))
    ]
    return ImageTable(
        keys=keys,
        labels=labels,
        findings=findings,
        task=task,
        patient_ids=list(keys),  # no patient ids in MedMNIST: each image is its own patient
        official_split=[split for split, (imgs, _) in parts.items() for _ in range(len(imgs))],
        arrays=images,
        source=str(npz),
    )


def _has(data: np.lib.npyio.NpzFile, split: str) -> bool:
    return f"{split}_images" in data.files and f"{split}_labels" in data.files


def _check_arrays(images: np.ndarray, labels: np.ndarray, split: str, npz: Path) -> None:
    if images.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"{split}_images is {images.dtype}, expected uint8 or uint16", path=str(npz)
        )
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise DataError(
            f"{split}_images has shape {images.shape}, expected (N, H, W) or (N, H, W, 3) "
            "(3-D MedMNIST volumes are not supported)",
            path=str(npz),
        )
    if len(labels) != len(images):
        raise DataError(
            f"{len(images)} {split}_images but {len(labels)} {split}_labels", path=str(npz)
        )


def _labels(raw: np.ndarray, base: str, npz: Path) -> tuple[np.ndarray, list[str], str]:
    """One column of class ids -> one-hot multiclass; several 0/1 columns -> multilabel."""
    names = _info_names(base)
    if raw.shape[1] > 1:
        if not np.isin(raw, (0, 1)).all():
            raise DataError("multilabel labels must be 0 or 1", path=str(npz))
        k = raw.shape[1]
        if k == len(NIH_FINDINGS):  # ChestMNIST: the NIH ChestX-ray14 findings, same order
            findings = list(NIH_FINDINGS)
        else:
            findings = names if len(names) == k else [f"finding_{i}" for i in range(k)]
        return raw.astype(np.float32), findings, "multilabel"
    ids = raw[:, 0].astype(np.int64)
    n_classes = len(names) if names else int(ids.max()) + 1
    if ids.min() < 0 or ids.max() >= max(n_classes, 2):
        raise DataError(
            f"class ids {ids.min()}..{ids.max()} outside 0..{n_classes - 1}", path=str(npz)
        )
    n_classes = max(n_classes, 2)
    findings = names if len(names) == n_classes else [f"class_{i}" for i in range(n_classes)]
    return np.eye(n_classes, dtype=np.float32)[ids], findings, "multiclass"


def _info_names(base: str) -> list[str]:
    """Class names from the medmnist package's INFO, when it is installed; else []."""
    try:
        from medmnist import INFO
    except ImportError:
        return []
    label = INFO.get(base, {}).get("label", {})
    return [label[str(i)] for i in range(len(label))] if label else []
