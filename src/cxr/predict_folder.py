"""`cxr predict FOLDER --model RUN --out predictions.csv`: the web API's prediction, for many files.

The same Engine as `POST /api/predict` (decode limits, colour-photo refusal, the run's
out-of-distribution gate, the validation thresholds), so a CSV row and an API answer agree.
A file that cannot be used gets a row with its error, and the others go on.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cxr.data.image_io import IMAGE_EXTENSIONS
from cxr.errors import CxrError, DataError


@dataclass
class FolderResult:
    out: Path
    n_ok: int
    n_failed: int
    seconds: float


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (recursively, sorted), or `folder` itself if a file."""
    root = Path(folder)
    if not root.exists():
        raise DataError("no such file or folder", path=str(root))
    if root.is_file():
        return [root]
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        wanted = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"no image files found (looked for {wanted})", path=str(root))
    return files


def csv_columns(findings: list[str]) -> list[str]:
    per = [f"{f}_{part}" for f in findings for part in ("probability", "positive")]
    return ["file", "status", "top_finding", *per, "ood_score", "seconds", "warning", "error"]


def predict_folder(
    model: str | Path,
    folder: str | Path,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    max_pixels: int = 40_000_000,
    ood_gate: bool = True,
    backend: str = "torch",
) -> FolderResult:
    """Predict every image under `folder` with the run in `model`; one CSV row per file."""
    from cxr.serve.engine import Engine

    out = Path(out)
    if out.is_dir():
        raise CxrError(f"--out {out} is a folder; name a CSV file, e.g. {out}/predictions.csv")
    if out.exists() and not force:
        raise CxrError(f"{out} already exists; pass --force to overwrite it")
    files = image_files(folder)
    engine = Engine(
        {"model": str(model), "max_pixels": max_pixels, "ood_gate": ood_gate, "backend": backend}
    )
    root = Path(folder) if Path(folder).is_dir() else Path(folder).parent
    columns = csv_columns(engine.findings)
    rows, n_ok, total = [], 0, 0.0
    for path in tqdm(files, desc="predict", unit="img", disable=not progress):
        row = {"file": path.relative_to(root).as_posix()}
        try:
            answer = engine.analyse(path.read_bytes(), str(path), heatmaps="none", images=False)
        except (CxrError, OSError) as exc:
            row |= {"status": "error", "error": str(exc)}
        else:
            n_ok += 1
            total += answer["seconds"]
            row |= {
                "status": "ok",
                "top_finding": answer["top_finding"],
                "ood_score": answer["ood"].get("score"),
                "seconds": answer["seconds"],
                "warning": " ".join(answer["warnings"]),
            }
            for f in answer["findings"]:
                row[f"{f['finding']}_probability"] = f"{f['probability']:.6f}"
                row[f"{f['finding']}_positive"] = int(f["positive"])
        rows.append(row)
    _write_csv(out, columns, rows)
    return FolderResult(out, n_ok, len(rows) - n_ok, total)


def _write_csv(out: Path, columns: list[str], rows: list[dict]) -> None:
    """Written to a temporary name then renamed: an interrupted run leaves no half CSV."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
