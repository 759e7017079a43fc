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

Then the batch path on `--device` (cpu, or cuda for a GPU) against the rate of the machine's
cores at decoding and preprocessing alone (JPEG decode + resize + CLAHE + pad in the same thread
pool, no model): `cxr.batch_predict.predict_files` with the PyTorch engine on that device, worker
threads sized to the cores, uint8 batches stacked into pinned memory and copied without blocking.
On a GPU the model should never be the bottleneck: end to end >= 0.8x the preprocessing rate.

    .venv/bin/python benchmarks/predict_folder.py [--files 96] [--rounds 3]
    .venv/bin/python benchmarks/predict_folder.py --device cuda --files 2000 --only-device
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

from cxr.inference import make_engine
from cxr.inference.analysis import Analyser as Engine
from cxr.inference.backends import cpu_cores
from cxr.inference.batch import default_preparer, predict_files
from cxr.inference.export import export_run
from cxr.inference.folder import predict_folder


def per_file(run: Path, files: list[Path], gate: bool) -> tuple[float, dict[str, float]]:
    engine = Engine({"model": str(run), "ood_gate": gate})
    start = time.perf_counter()
    probs = {}
    for f in files:
        answer = engine.analyse(f.read_bytes(), str(f), heatmaps="none", images=False)
        probs[f.name] = next(
            x["probability"] for x in answer["findings"] if x["finding"] == "PNEUMONIA"
        )
    return time.perf_counter() - start, probs


def batched(run: Path, folder: Path, out: Path, backend: str, gate: bool):
    start = time.perf_counter()
    predict_folder(
        run, folder, out, force=True, progress=False, ood_gate=gate, backend=backend, batch_size=32
    )
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


def preprocess_only(files: list[Path], cfg, workers: int) -> float:
    """Seconds to decode and preprocess every file in a pool of `workers` threads, no model."""
    from concurrent.futures import ThreadPoolExecutor

    prepare = default_preparer(cfg)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(prepare, files):
            pass
    return time.perf_counter() - start


def end_to_end(engine, files: list[Path], batch_size: int, workers: int) -> float:
    """Seconds for predict_files (decode + preprocess ahead of batched model calls)."""
    start = time.perf_counter()
    results = list(predict_files(engine, files, batch_size, workers, progress=False))
    seconds = time.perf_counter() - start
    bad = [r.error for r in results if r.error]
    assert not bad, bad[:3]
    return seconds


def device_section(args, files: list[Path], tmp: Path) -> None:
    """End to end on args.device against the cores' decode + CLAHE rate, alternating rounds."""
    import torch

    run = make_run(tmp / "device-run", args.arch, 224)
    engine = make_engine(run, backend="torch", device=args.device)
    workers = args.workers or cpu_cores()
    cfg = engine.info.preprocess
    end_to_end(engine, files[: args.batch_size * 2], args.batch_size, workers)  # warm-up
    prep, e2e = [], []
    for _ in range(args.rounds):
        prep.append(preprocess_only(files, cfg, workers))
        e2e.append(end_to_end(engine, files, args.batch_size, workers))
    name = (
        torch.cuda.get_device_name(engine.device)
        if engine.device.type == "cuda"
        else f"CPU ({cpu_cores()} cores)"
    )
    n = len(files)
    print(
        f"batch path on {args.device} ({name}): {n} real Kermany JPEGs, {args.arch} at 224 px "
        f"(float32, channels-last), batch {args.batch_size}, {workers} decode/preprocess "
        f"threads, load average {os.getloadavg()[0]:.1f}; best of {args.rounds} alternating "
        "rounds"
    )
    print()
    print("| path | seconds | images/s |")
    print("|---|---|---|")
    print(
        f"| decode + preprocess alone ({workers} threads, no model) | {min(prep):.2f} | "
        f"{n / min(prep):.1f} |"
    )
    print(
        f"| end to end: predict_files, PyTorch on {args.device} | {min(e2e):.2f} | "
        f"{n / min(e2e):.1f} |"
    )
    print()
    print(f"end to end / preprocessing alone: {min(prep) / min(e2e):.2f} (target >= 0.8 on a GPU)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="device of the batch-path table: cpu, cuda")
    ap.add_argument("--arch", default="resnet18", help="model of the batch-path table")
    ap.add_argument("--batch-size", type=int, default=32, help="batch of the batch-path table")
    ap.add_argument("--workers", type=int, default=None, help="default: one per core")
    ap.add_argument(
        "--only-device", action="store_true", help="skip the per-file vs batched CPU table"
    )
    args = ap.parse_args()
    files = real_files(args.files)
    if args.only_device:
        with tempfile.TemporaryDirectory() as tmp:
            device_section(args, files, Path(tmp))
        return
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
    print(
        f"{len(files)} real Kermany JPEGs, ResNet-18 at 224 px, {cpu_cores()} cores, load "
        f"average {os.getloadavg()[0]:.1f}; best of {args.rounds} rounds (model loading "
        "included)"
    )
    print()
    print("| path | OOD gate | seconds | images/s | speed-up vs per-file, gate off |")
    print("|---|---|---|---|---|")
    base = min(best[paths[0], False])
    for (name, gate), times in best.items():
        s = min(times)
        print(
            f"| {name} | {'on' if gate else 'off'} | {s:.1f} | {len(files) / s:.1f} | "
            f"{base / s:.2f}x |"
        )
    print()
    print(f"largest probability difference between the paths: {worst:.1e}")
    assert worst < 1e-4, worst
    assert all(sorted(a) == sorted(reference) for a in answers.values())
    print()
    with tempfile.TemporaryDirectory() as tmp:
        device_section(args, real_files(args.files), Path(tmp))


if __name__ == "__main__":
    main()
