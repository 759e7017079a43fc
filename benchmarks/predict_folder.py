"""`cxr predict` on a folder of real radiographs: one file at a time against batched, in one run.

The same real Kermany JPEGs and the same run folder (ResNet-18 at 224 px, seeded weights: speed
does not depend on their values) go through

- the per-file path: the web API's `Engine.analyse` for each file in turn (decode, checks,
  preprocess, one model call per image), which is what `cxr predict` did before batching;
- `predict_folder` with PyTorch and with ONNX Runtime: worker threads decode and preprocess
  ahead of the model, which answers batches of 32.

The three alternate round by round so that they share any load drift; the best round counts.
Every path writes the same probabilities (checked here to 1e-4). The OOD gate is off in all
three (it needs a fitted gate; batched, it adds one feature pass per batch).

    .venv/bin/python benchmarks/predict_folder.py [--files 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from inference import make_run, real_files  # benchmarks/inference.py, beside this file

from cxr.engine import cpu_cores
from cxr.export import export_run
from cxr.predict_folder import predict_folder
from cxr.serve.engine import Engine


def per_file(run: Path, files: list[Path]) -> tuple[float, dict[str, float]]:
    engine = Engine({"model": str(run), "ood_gate": False})
    start = time.perf_counter()
    probs = {}
    for f in files:
        answer = engine.analyse(f.read_bytes(), str(f), heatmaps="none", images=False)
        probs[f.name] = next(x["probability"] for x in answer["findings"]
                             if x["finding"] == "PNEUMONIA")  # fmt: skip
    return time.perf_counter() - start, probs


def batched(run: Path, folder: Path, out: Path, backend: str) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    predict_folder(run, folder, out, force=True, progress=False, ood_gate=False,
                   backend=backend, batch_size=32)  # fmt: skip
    seconds = time.perf_counter() - start
    with out.open() as fh:
        return seconds, {r["file"]: float(r["PNEUMONIA_probability"]) for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    files = real_files(args.files)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "in"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
        files = sorted(folder.iterdir())
        run = make_run(tmp / "run", "resnet18", 224)
        export_run(run)
        best = {"per-file (API engine, PyTorch)": [], "batched, PyTorch": [],
                "batched, ONNX Runtime": []}  # fmt: skip
        answers = {}
        for _ in range(args.rounds):
            for name in best:
                if name.startswith("per-file"):
                    seconds, probs = per_file(run, files)
                else:
                    backend = "onnx" if "ONNX" in name else "torch"
                    seconds, probs = batched(run, folder, tmp / "p.csv", backend)
                best[name].append(seconds)
                answers[name] = probs
    reference = answers["per-file (API engine, PyTorch)"]
    worst = max(abs(p - reference[k]) for a in answers.values() for k, p in a.items())
    base = min(best["per-file (API engine, PyTorch)"])
    print(f"{len(files)} real Kermany JPEGs, ResNet-18 at 224 px, {cpu_cores()} cores, load "
          f"average {os.getloadavg()[0]:.1f}; best of {args.rounds} rounds (model loading "
          "included)")  # fmt: skip
    print()
    print("| path | seconds | images/s | speed-up vs per-file |")
    print("|---|---|---|---|")
    for name, times in best.items():
        s = min(times)
        print(f"| {name} | {s:.1f} | {len(files) / s:.1f} | {base / s:.2f}x |")
    print()
    print(f"largest probability difference between the paths: {worst:.1e}")
    assert worst < 1e-4, worst
    np.testing.assert_equal(sorted(reference), sorted(answers["batched, ONNX Runtime"]))


if __name__ == "__main__":
    main()
