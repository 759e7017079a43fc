"""Inference speed on this machine, in one run: PyTorch eager, ONNX Runtime float32 and int8.

For ResNet-18 and ResNet-50 at 224 px (weights from a seeded initialisation: speed does not
depend on their values; nothing is downloaded), both backends of `cxr.inference.backends`
answer the same real Kermany radiographs, preprocessed exactly as `cxr predict` does; beside
them the static int8 models `cxr export --int8` writes (cxr.inference.quantize: per-channel
weights, calibrated here on the same 32 radiographs), in each ONNX layout asked for (QDQ and
QOperator by default):

- images/s and median latency per call at batch 1 and batch 32, the backends alternating
  in blocks of calls so that both see the same machine load (the first call of each block is
  not timed, so neither pays for the other's threads winding down);
- where the time of one image goes in `cxr predict`: decoding the file, preprocessing
  (resize, CLAHE, pad) and the model;
- the model's time against its floor: FLOPs per image (counted by torch's FlopCounterMode,
  multiply-add = 2) over this machine's measured float32 matrix-multiply rate (best of several
  2048 x 2048 products with the same threads). A ratio of 1 would be a model that runs at
  matmul speed; convolutions with few channels (the stem) and memory-bound layers cost more.

    .venv/bin/python benchmarks/inference.py [--archs resnet18,resnet50] [--rounds 20]

Targets (issue 6): ONNX Runtime at batch 1 at least 1.5x PyTorch eager; the model within 3x of
the FLOP floor. Issue 16: int8 at batch 1 at least 1.8x float32 ONNX Runtime on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr.checkpoint import save_weights
from cxr.config import RunConfig, save_config
from cxr.data.image_io import decode_image
from cxr.inference import make_engine
from cxr.inference.backends import OnnxEngine, cpu_cores
from cxr.inference.batch import predict_files
from cxr.inference.export import export_run
from cxr.inference.quantize import QUANT_FORMATS, quantize_onnx
from cxr.models import build_model
from cxr.preprocess import preprocess

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"
FINDINGS = ["NORMAL", "PNEUMONIA"]


def real_files(n: int) -> list[Path]:
    root = KERMANY / "chest_xray" / "train"
    if not root.is_dir():
        raise SystemExit(f"real data not found at {root.resolve()} (see ../shared/data)")
    files = sorted((root / "NORMAL").glob("*.jpeg"))[: n // 2]
    return files + sorted((root / "PNEUMONIA").glob("*.jpeg"))[: n - len(files)]


def make_run(folder: Path, arch: str, size: int) -> Path:
    """A run folder as `cxr train` leaves it, with seeded random weights."""
    folder.mkdir(parents=True)
    cfg = RunConfig.model_validate(
        {"preprocess": {"image_size": size}, "model": {"arch": arch}, "out_dir": str(folder)}
    )
    save_config(cfg, folder / "config.json")
    torch.manual_seed(0)
    save_weights(build_model(cfg.model, len(FINDINGS)), folder / "model.safetensors")
    info = {"findings": FINDINGS, "task": "multiclass", "thresholds": dict.fromkeys(FINDINGS, 0.5)}
    (folder / "model.json").write_text(json.dumps(info))
    return folder


def latencies(engine, batch: np.ndarray, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        tick = time.perf_counter()
        engine.predict_batch(batch)
        out.append(time.perf_counter() - tick)
    return out


def matmul_rate(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n x n product with torch (MKL/oneDNN) on `threads`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=20, help="calls per backend at batch 1")
    ap.add_argument("--rounds-32", type=int, default=3, help="calls per backend at batch 32")
    ap.add_argument("--threads", type=int, default=None, help="both backends (default: cores)")
    ap.add_argument(
        "--int8-formats",
        default=",".join(QUANT_FORMATS),
        help="int8 ONNX layouts to time beside float32: qdq,qoperator ('' for none)",
    )
    args = ap.parse_args()
    int8_formats = [f for f in args.int8_formats.split(",") if f]
    size, threads = args.image_size, args.threads or cpu_cores()

    # Decode and preprocess 32 real radiographs once, timing each stage per image.
    files = real_files(32)
    decode_s, prep_s, pixels = [], [], []
    for f in files:
        tick = time.perf_counter()
        image = decode_image(f)
        tock = time.perf_counter()
        pixels.append(
            preprocess(image, RunConfig().preprocess.model_copy(update={"image_size": size}))
        )
        decode_s.append(tock - tick)
        prep_s.append(time.perf_counter() - tock)
    pixels = np.stack(pixels)

    rates = [matmul_rate(threads)]  # measured again after each model: the best one counts
    rows, floors, pipeline = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            run = make_run(Path(tmp) / arch, arch, size)
            export = export_run(run, images=pixels[:8])
            engines = {b: make_engine(run, backend=b, threads=threads) for b in ("torch", "onnx")}
            for fmt in int8_formats:
                # Calibrated on the 32 radiographs (speed does not depend on the ranges); the
                # engine is built directly: this int8 file has no contract of its own.
                path = Path(tmp) / arch / f"model.int8-{fmt}.onnx"
                quantize_onnx(export.onnx_path, path, pixels, fmt)
                engines[f"int8-{fmt}"] = OnnxEngine(engines["onnx"].info, path, threads=threads)
            flops = flops_per_image(engines["torch"].model, size)
            for batch_size, calls in ((1, args.rounds), (32, args.rounds_32)):
                batch = pixels[:batch_size]
                times = {b: [] for b in engines}
                for engine in engines.values():  # warm-up: kernels chosen, memory allocated
                    latencies(engine, batch, 2)
                # Blocks of calls, backends alternating block by block so that both share any
                # load drift; the first call of each block is not timed: it absorbs the other
                # backend's thread pool winding down (alternating single calls once made
                # PyTorch look several times slower than it runs on its own).
                block = max(1, min(5, calls))
                for _ in range(max(1, calls // block)):
                    for name, engine in engines.items():
                        latencies(engine, batch, 1)
                        times[name] += latencies(engine, batch, block)
                for name in engines:
                    median = statistics.median(times[name])
                    fastest_ms = min(times[name]) * 1e3
                    rows.append(
                        (arch, name, batch_size, batch_size / median, median * 1e3, fastest_ms)
                    )
            # The floor ratio takes the fastest call at batch 32 of either backend, as the
            # matmul rate takes the fastest product: both are the machine at its least loaded.
            fastest = min(min(times["torch"]), min(times["onnx"])) / 32  # float32 only
            rates.append(matmul_rate(threads))
            floors.append((arch, flops, fastest))
            if arch == args.archs.split(",")[0]:
                start = time.perf_counter()
                results = list(predict_files(engines["onnx"], files, 32, progress=False))
                pipeline = {
                    "seconds": time.perf_counter() - start,
                    "model_s": statistics.median(r.model_s for r in results),
                    "arch": arch,
                    "diff": export.max_abs_diff,
                }

    load = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {threads} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{_ort_version()} ({threads} intra-op threads); load average {load[0]:.1f} "
        f"(1 min) while measuring: other jobs share these cores"
    )
    print(
        f"{size} px, real Kermany radiographs, seeded random weights, median of "
        f"{args.rounds} (batch 1) / {args.rounds_32} (batch 32) calls per backend"
    )
    print()
    print("| model | backend | batch | images/s | median latency (ms) | fastest call (ms) |")
    print("|---|---|---|---|---|---|")
    for arch, name, batch_size, ips, ms, fastest_ms in rows:
        print(
            f"| {arch} | {_backend_name(name)} | "
            f"{batch_size} | {ips:.1f} | {ms:.1f} | {fastest_ms:.1f} |"
        )
    print()
    for arch in args.archs.split(","):
        t1 = next(r[4] for r in rows if r[:3] == (arch, "torch", 1))
        o1 = next(r[4] for r in rows if r[:3] == (arch, "onnx", 1))
        t1f = next(r[5] for r in rows if r[:3] == (arch, "torch", 1))
        o1f = next(r[5] for r in rows if r[:3] == (arch, "onnx", 1))
        print(
            f"{arch}: ONNX Runtime / PyTorch eager at batch 1: {t1 / o1:.2f}x in median "
            f"latency, {t1f / o1f:.2f}x in the fastest call (target >= 1.5x)"
        )
        for fmt in int8_formats:
            for batch_size in (1, 32):
                q = next(r for r in rows if r[:3] == (arch, f"int8-{fmt}", batch_size))
                o = next(r for r in rows if r[:3] == (arch, "onnx", batch_size))
                print(
                    f"{arch}: int8 ({fmt}) / float32 ONNX Runtime at batch {batch_size}: "
                    f"{o[4] / q[4]:.2f}x in median latency, {o[5] / q[5]:.2f}x in the fastest "
                    "call" + (" (target >= 1.8x)" if batch_size == 1 else "")
                )
    print()
    rate = max(rates)
    spread = ", ".join(f"{r:.0f}" for r in rates)
    print(
        f"measured float32 matmul rate: {rate:.1f} GFLOP/s ({threads} threads, 2048^3; best "
        f"of {len(rates)} measurements spread over the run: {spread})"
    )
    print(
        "| model | GFLOP / image | floor (ms / image) | model: fastest call at batch 32 "
        "(ms / image) | model / floor (target <= 3) |"
    )
    print("|---|---|---|---|---|")
    for arch, flops, fastest in floors:
        floor = flops / (rate * 1e9)
        print(
            f"| {arch} | {flops / 1e9:.2f} | {floor * 1e3:.1f} | {fastest * 1e3:.1f} | "
            f"{fastest / floor:.2f} |"
        )
    print()
    dec, pre = statistics.median(decode_s), statistics.median(prep_s)
    model = pipeline["model_s"]
    total = dec + pre + model
    print(
        f"where one image's time goes in `cxr predict` ({pipeline['arch']}, ONNX Runtime, "
        f"batch 32; medians per image):"
    )
    print("| stage | ms / image | share |")
    print("|---|---|---|")
    for stage, seconds in (
        ("decode (JPEG)", dec),
        ("preprocess (resize, CLAHE, pad)", pre),
        ("model", model),
    ):
        print(f"| {stage} | {seconds * 1e3:.1f} | {seconds / total:.0%} |")
    print(
        f"predict_files on {len(files)} files (decode + preprocess in a thread pool, "
        f"overlapped with the model): {len(files) / pipeline['seconds']:.1f} images/s, "
        f"against {1 / total:.1f} images/s for the stages one after another"
    )
    print(f"export check: max |ONNX - PyTorch| logit difference {pipeline['diff']:.1e}")


def _backend_name(name: str) -> str:
    if name.startswith("int8-"):
        return f"ONNX Runtime int8 ({name.removeprefix('int8-')})"
    return {"torch": "PyTorch eager", "onnx": "ONNX Runtime float32"}[name]


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
