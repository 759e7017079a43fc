"""`cxr predict FOLDER --model RUN --out predictions.csv`: the web API's prediction, for many files.

The same checks as `POST /api/predict` (decode limits, colour-photo refusal, the run's
out-of-distribution gate, the validation thresholds), so a CSV row and an API answer agree;
but batched through `cxr.inference.batch.predict_files`: worker threads decode and preprocess
the next images while the model (PyTorch or ONNX Runtime) and the gate run on whole batches.
A file that cannot be used gets a row with its error, and the others go on.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.image_io import IMAGE_EXTENSIONS, DecodeOptions
from cxr.data.sniff import list_images
from cxr.errors import CxrError, DataError, NotAChestXray
from cxr.inference.batch import Prepared, predict_files
from cxr.inference.predictor import Predictor
from cxr.inference.screening import (
    check_colour,
    decode_upload,
    gate_verdict,
    load_gate,
    ood_warning,
)
from cxr.ood.gate import OodGate, contrast
from cxr.preprocess import preprocess

IDENTIFIER_COLUMNS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")


@dataclass
class FolderResult:
    out: Path
    n_ok: int
    n_failed: int
    seconds: float  # summed per-file time (decode + preprocess + share of the model)
    wall_s: float = 0.0  # the whole folder, start to finish
    n_skipped: int = 0  # files that are not images (each has a row saying why)
    skipped: list[str] = field(default_factory=list)  # "file: why", for the summary on screen

    @property
    def images_per_s(self) -> float:
        n = self.n_ok + self.n_failed
        return n / self.wall_s if self.wall_s > 0 else 0.0


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (recursively, sorted), or `folder` itself if a file."""
    return _folder_files(folder)[0]


def _folder_files(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Images by extension or content (extensionless PACS files), and the others with why."""
    root = Path(folder)
    if not root.exists():
        raise DataError("no such file or folder", path=str(root))
    files, skipped = list_images(root)
    if not files:
        wanted = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"no image files found (looked for {wanted}, or DICOM by content)", path=str(root)
        )
    return files, skipped


def csv_columns(findings: list[str], identifiers: bool = False) -> list[str]:
    per = [f"{f}_{part}" for f in findings for part in ("probability", "positive")]
    ids = list(IDENTIFIER_COLUMNS) if identifiers else []
    return [
        "file",
        "status",
        "top_finding",
        *per,
        "ood_score",
        "seconds",
        "warning",
        "caution",
        "error",
        *ids,
    ]


def predict_folder(
    model: str | Path,
    folder: str | Path,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    max_pixels: int = 40_000_000,
    ood_gate: bool = True,
    backend: str = "torch",
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "cpu",
    decode: DecodeOptions | None = None,
) -> FolderResult:
    """Predict every image under `folder` with the run in `model`; one CSV row per file."""

    out = Path(out)
    if out.is_dir():
        raise CxrError(f"--out {out} is a folder; name a CSV file, e.g. {out}/predictions.csv")
    if out.exists() and not force:
        raise CxrError(f"{out} already exists; pass --force to overwrite it")
    if batch_size < 1:
        raise CxrError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise CxrError(f"--workers must be at least 1, got {workers}")
    files, not_images = _folder_files(folder)
    decode = decode or DecodeOptions()
    predictor = Predictor.from_run_dir(model, device=device, backend=backend)
    gate, note = (None, "turned off (--no-ood-gate)")
    if ood_gate:
        gate, note = load_gate(Path(model), predictor.run)
    checks = _Checks(predictor, gate, note, max_pixels, decode)
    root = Path(folder) if Path(folder).is_dir() else Path(folder).parent
    findings = predictor.findings
    rule = predictor.engine.info.decision  # top_finding never contradicts the calls
    rows, n_ok, total = [], 0, 0.0
    start = time.perf_counter()
    results = predict_files(
        predictor.engine,
        files,
        batch_size=batch_size,
        workers=workers,
        prepare=_preparer(checks),
        screen=_screen(checks),
        progress=progress,
    )
    for r in results:
        row = {"file": r.path.relative_to(root).as_posix()}
        row |= r.extra.get("identifiers") or {}
        # the DICOM header's doubt (e.g. BodyPartExamined KNEE), as the web Analyser shows it
        row["caution"] = r.extra.get("caution", "")
        ood = r.extra.get("ood") or {}
        if ood.get("score") is not None:
            row["ood_score"] = ood["score"]
        if r.error is not None:
            rows.append(row | {"status": "error", "error": r.error})
            continue
        seconds = r.decode_s + r.preprocess_s + r.model_s
        n_ok += 1
        total += seconds
        row |= {
            "status": "ok",
            "top_finding": findings[int(rule.top(r.probabilities)[0])],
            "seconds": round(seconds, 5),
            "warning": r.extra.get("warning", ""),
        }
        for f, p, pos in zip(findings, r.probabilities, r.positive, strict=True):
            row[f"{f}_probability"] = f"{p:.6f}"
            row[f"{f}_positive"] = int(pos)
        rows.append(row)
    for path, reason in not_images:
        rows.append(
            {"file": path.relative_to(root).as_posix(), "status": "skipped", "error": reason}
        )
    _write_csv(out, csv_columns(findings, decode.keep_identifiers), rows)
    skipped = [f"{p.relative_to(root).as_posix()}: {why}" for p, why in not_images]
    return FolderResult(
        out,
        n_ok,
        len(rows) - n_ok - len(skipped),
        total,
        time.perf_counter() - start,
        len(skipped),
        skipped,
    )


@dataclass
class _Checks:
    """What the workers and the batch screen share: the model, its gate, the decode limit."""

    predictor: Predictor
    gate: OodGate | None
    gate_note: str
    max_pixels: int
    decode: DecodeOptions


def _preparer(serve: _Checks):
    """path -> Prepared, in a worker thread: read, decode with the API's limits, refuse colour
    photographs, preprocess; keeps only what the gate needs (not the full-size image)."""
    cfg = serve.predictor.run.config.preprocess

    def prepare(path: Path) -> Prepared:
        tick = time.perf_counter()
        decoded = decode_upload(path.read_bytes(), str(path), serve.max_pixels, serve.decode)
        check_colour(decoded, str(path))
        tock = time.perf_counter()
        pixels = preprocess(decoded.image, cfg)
        extra = {"path": str(path), "raw": decoded.colour}
        if decoded.warnings:
            extra["warning"] = "; ".join(decoded.warnings)
        if decoded.caution:
            extra["caution"] = decoded.caution
        if serve.decode.keep_identifiers:  # only when asked: never in a CSV otherwise
            extra["identifiers"] = {k: decoded.meta.get(k, "") for k in IDENTIFIER_COLUMNS}
        if serve.gate is not None:
            extra["contrast"] = contrast(decoded.image)
        return Prepared(pixels, extra, tock - tick, time.perf_counter() - tock)

    return prepare


def _screen(serve: _Checks):
    """The run's OOD gate on a whole batch, as the API words it: a refusal becomes the file's
    error, a warning goes into its row. The gate's features come from the forward pass that gave
    the probabilities (PyTorch, or ONNX exports with a features output); else it runs its own."""

    def screen(batch: list, features: np.ndarray | None) -> list[str | None]:
        if serve.gate is None:
            for item in batch:
                item.extra.pop("raw", None)
                item.extra["ood"] = {"checked": False, "reason": serve.gate_note}
            return [None] * len(batch)
        verdicts = serve.gate.check_batch(
            np.stack([item.pixels for item in batch]),
            raws=[item.extra.pop("raw", None) for item in batch],
            contrasts=[item.extra.pop("contrast", None) for item in batch],
            features=features,
        )
        errors: list[str | None] = []
        for item, verdict in zip(batch, verdicts, strict=True):
            try:
                ood = gate_verdict(verdict, item.extra["path"])
            except NotAChestXray as exc:
                item.extra["ood"] = exc.ood
                errors.append(str(exc))
                continue
            item.extra["ood"] = ood
            if ood.get("ok") is False:
                before = item.extra.get("warning")
                item.extra["warning"] = "; ".join(filter(None, [before, ood_warning(ood)]))
            errors.append(None)
        return errors

    return screen


def _write_csv(out: Path, columns: list[str], rows: list[dict]) -> None:
    """Written to a temporary name then renamed: an interrupted run leaves no half CSV."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
