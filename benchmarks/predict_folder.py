"""`cxr predict` on a folder of real radiographs: one file at a time against batched, in one run.

The same real Kermany JPEGs and the same run folder (ResNet-18 at 224 px, seeded weights: speed
does not depend on their values) go through

- the per-file path: the web API's `Engine.analyse` for each file in turn (decode, checks,
  preprocess, one model call per image), which is what `cxr predict` did before batching;
- `predict_folder` with PyTorch and with ONNX Runtime: worker threads decode and preprocess
  ahead of the model, which answers batches of 32.

Each path runs with the OOD gate off and on (a gate fitted here on 200 other real Kermany
images, set to warn so that every file is predicted): the gate scores the features of the
prediction's own forward pass, so it should cost little. All paths alternate round by round so
that they share any load drift; the best round counts. Every path writes the same
probabilities (checked here to 1e-4).

    .venv/bin/python benchmarks/predict_folder.py [--files 96] [--rounds 3]
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

from cxr.inference.analysis import Analyser as Engine
from cxr.inference.backends import cpu_cores
from cxr.inference.export import export_run
from cxr.inference.folder import predict_folder


def per_file(run: Path, files: list[Path], gate: bool) -> tuple[float, dict[str, float]]:
    engine = Engine({"model": str(run), "ood_gate": gate})
    start = time.perf_counter()
    probs = {}
    for f in files:
        answer = engine.analyse(f.read_bytes(), str(f), heatmaps="none", images=False)
        probs[f.name] = next(x["probability"] for x in answer["findings"]
                             if x["finding"] == "PNEUMONIA")  # fmt: skip
    return time.perf_counter() - start, probs


def batched(run: Path, folder: Path, out: Path, backend: str, gate: bool):
    start = time.perf_counter()
    predict_folder(run, folder, out, force=True, progress=False, ood_gate=gate,
                   backend=backend, batch_size=32)  # fmt: skip
    seconds = time.perf_counter() - start
    with out.open() as fh:
        return seconds, {r["file"]: float(r["PNEUMONIA_probability"]) for r in csv.DictReader(fh)}


def fit_gate(run: Path, n_files: int) -> None:
    """The run's OOD gate, fitted on 200 real Kermany images that are not predicted here."""
    from cxr.config import RunConfig
    from cxr.data.image_io import decode_image
    from cxr.ood.fit import fit_ood_gate
    from cxr.ood.gate import OodConfig
    from cxr.preprocess import preprocess

    cfg = RunConfig.model_validate_json((run / "config.json").read_text()).preprocess
    others = real_files(n_files + 200)[-200:]
    pixels = np.stack([preprocess(decode_image(f), cfg) for f in others])
    fit_ood_gate(run, pixels, OodConfig(action="warn"), progress=False).save(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    files = real_files(args.files)
    paths = ("per-file (API engine, PyTorch)", "batched, PyTorch", "batched, ONNX Runtime")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "in"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
        files = sorted(folder.iterdir())
        run = make_run(tmp / "run", "resnet18", 224)
        export_run(run)
        fit_gate(run, args.files)
        best = {(name, gate): [] for gate in (False, True) for name in paths}
        answers = {}
        for _ in range(args.rounds):
            for name, gate in best:
                if name.startswith("per-file"):
                    seconds, probs = per_file(run, files, gate)
                else:
                    backend = "onnx" if "ONNX" in name else "torch"
                    seconds, probs = batched(run, folder, tmp / "p.csv", backend, gate)
                best[name, gate].append(seconds)
                answers[name, gate] = probs
    reference = answers[paths[0], False]
    worst = max(abs(p - reference[k]) for a in answers.values() for k, p in a.items())
    print(f"{len(files)} real Kermany JPEGs, ResNet-18 at 224 px, {cpu_cores()} cores, load "
          f"average {os.getloadavg()[0]:.1f}; best of {args.rounds} rounds (model loading "
          "included)")  # fmt: skip
    print()
    print("| path | OOD gate | seconds | images/s | speed-up vs per-file, gate off |")
    print("|---|---|---|---|---|")
    base = min(best[paths[0], False])
    for (name, gate), times in best.items():
        s = min(times)
        print(f"| {name} | {'on' if gate else 'off'} | {s:.1f} | {len(files) / s:.1f} | "
              f"{base / s:.2f}x |")  # fmt: skip
    print()
    print(f"largest probability difference between the paths: {worst:.1e}")
    assert worst < 1e-4, worst
    assert all(sorted(a) == sorted(reference) for a in answers.values())


if __name__ == "__main__":
    main()
