"""Bytes in, a JSON-ready answer out: the one path behind `POST /api/predict`.

Flask-free on purpose (the web API is a thin door onto it): the upload's screening
(`cxr.inference.screening`) -> `Predictor` -> Grad-CAM for the findings asked for -> PNGs for the
browser. Nothing here writes to disk.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import ServeConfig, serve_config
from cxr.data.image_io import DecodeOptions
from cxr.errors import BadRequest
from cxr.explain.gradcam import overlay
from cxr.inference.borderline import RELIABLE_AUROC, finding_bands, grade
from cxr.inference.microbatch import MicroBatcher, Waiter
from cxr.inference.model_info import model_info
from cxr.inference.predictor import Predictor
from cxr.inference.screening import (
    Decoded,
    check_colour,
    decode_upload,
    gate_verdict,
    load_gate,
    ood_warning,
)

__all__ = [
    "Analyser",
    "HEATMAP_CHOICES",
    "HEATMAP_SPEC_CHARS",
    "heatmap_rgba",
    "jpeg_data_url",
    "png_bytes",
    "png_data_url",
]

HEATMAP_CHOICES = ("auto", "none", "top", "positive", "all")
# Grad-CAM is a grid of S / 32 cells a side (7 at 224 px, 16 at 512; twice that on the finer
# layer): 4 PNG pixels per cell carry all of it and the browser stretches the map smoothly over
# the image. A 64 px RGBA map is ~4 KB, a 256 px one ~30 KB: seven of those broke the budget.
HEATMAP_PIXELS_PER_CELL = 4
HEATMAP_SIZE = (64, 256)  # smallest and largest long side of a heatmap PNG
# Heat levels sent: 32 steps of the colour scale (the browser's smooth stretching blends them)
# make a map ~1.4 KB instead of ~3.6 KB of PNG; a 14-finding answer carries up to 14 of them.
HEATMAP_LEVELS = 32
# The inline preview: an 8-bit JPEG for the first paint, the results list and the history. The
# lossless display image the viewer windows (8 or 16 bits, up to ServeConfig.display_size) is
# fetched separately (GET /api/display/<id>), so a predict answer stays near 100 KB even for a
# 3000 px 16-bit upload.
PREVIEW_SIZE = 768
PREVIEW_QUALITY = 75  # a 768 px film ~36 KB
MODEL_VIEW_QUALITY = 75  # CLAHE brings out grain: a 512 px model view is ~28 KB at 75
MODEL_VIEW_LOSSLESS = 128  # model inputs up to this side go as PNG: exact, and about as small
HEATMAP_SPEC_CHARS = 2048  # every finding's name, comma-separated, fits with room to spare
# Grad-CAM target: "last" (the usual layer, S / 32 cells a side) or "finer" (S / 16); the
# ResNet names layer4 / layer3 are accepted too.
HEATMAP_LAYERS = {"last": "last", "finer": "finer", "layer4": "last", "layer3": "finer"}


def _encode(ext: str, pixels: np.ndarray, params: list[int]) -> bytes:
    if pixels.ndim == 3:
        order = [2, 1, 0, 3][: pixels.shape[2]]  # RGB(A) -> OpenCV's BGR(A)
        pixels = pixels[..., order]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(pixels), params)
    if not ok:  # pragma: no cover - OpenCV fails only on shapes we never make
        raise RuntimeError(f"{ext} encoding failed")
    return buf.tobytes()


def png_bytes(pixels: np.ndarray, compression: int = 1) -> bytes:
    """uint8 / uint16 grey, RGB or RGBA pixels -> PNG bytes (fast compression by default)."""
    return _encode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, compression])


def png_data_url(pixels: np.ndarray, compression: int = 1) -> str:
    """uint8 grey, RGB or RGBA pixels -> a PNG data URL (fast compression: latency matters)."""
    data = png_bytes(pixels, compression)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def jpeg_data_url(pixels: np.ndarray, quality: int = PREVIEW_QUALITY) -> str:
    """uint8 grey or RGB pixels -> a JPEG data URL: for previews, where lossless is not needed."""
    data = _encode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def display_size(shape: tuple[int, int], limit: int) -> tuple[int, int]:
    """(h, w) of the returned preview: the original, shrunk to `limit` on its long side."""
    h, w = shape
    factor = min(1.0, limit / max(h, w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """[0, 1] map -> turbo colours whose opacity follows the map, so cold areas stay clear.

    The browser lays this over the X-ray and its opacity slider scales the whole layer.
    """
    level = np.clip(heatmap, 0.0, 1.0)
    bgr = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    alpha = (np.clip(level * 1.5, 0.0, 1.0) * 255).astype(np.uint8)
    return np.dstack([bgr[..., ::-1], alpha])


class Analyser:
    """A run loaded once, with its checks; `analyse` answers one uploaded file."""

    def __init__(self, cfg: ServeConfig | dict):
        self.cfg = serve_config(cfg)
        self.run_dir = Path(self.cfg.model)
        self.predictor = Predictor.from_run_dir(self.run_dir, self.cfg.device, self.cfg.backend)
        self.gate, self.gate_note = (None, "turned off (--no-ood-gate)")
        if self.cfg.ood_gate:
            self.gate, self.gate_note = load_gate(self.run_dir, self.predictor.run)
        self.info = model_info(self.run_dir, self.predictor, self.gate, self.gate_note)
        self.bands = finding_bands(_val_metrics(self.run_dir), self.info["thresholds"])
        self.info["operating_points"] = self.bands
        self.info["reliable_auroc"] = RELIABLE_AUROC
        self.started = time.time()
        # Many server threads, one model: forward passes take turns (no_grad inference would be
        # safe in parallel, but two at once only fight over the same cores).
        self._model_lock = threading.Lock()
        self._grids: dict[str, int] = {}
        self._batchers: dict[tuple[int, float], MicroBatcher] = {}  # shared by copies
        self._batchers_lock = threading.Lock()

    def batcher(self) -> MicroBatcher | None:
        """The micro-batcher for this config's --max-batch and --batch-wait-ms (None: 1)."""
        if self.cfg.max_batch <= 1:
            return None
        key = (self.cfg.max_batch, self.cfg.batch_wait_ms)
        with self._batchers_lock:  # not the model lock: a running model call holds that
            if key not in self._batchers:
                self._batchers[key] = MicroBatcher(
                    self._locked_forward, self.cfg.max_batch, self.cfg.batch_wait_ms / 1000
                )
            return self._batchers[key]

    def _locked_forward(self, pixels: np.ndarray):
        with self._model_lock:
            return self.predictor.engine.predict_with_features(pixels)

    def _predict(self, image: np.ndarray, waiter: Waiter | None):
        batcher = self.batcher()
        if batcher is None:
            return self.predictor.predict_with_features(image, self._locked_forward)
        forward = functools.partial(batcher.forward, waiter=waiter)
        return self.predictor.predict_with_features(image, forward)

    @property
    def findings(self) -> list[str]:
        return self.predictor.findings

    def heatmap_findings(
        self, spec: str | None, probs: dict[str, float], positive: set[str], top: str | None = None
    ):
        """Which findings get a heatmap: see HEATMAP_CHOICES, or comma-separated names. `top`:
        the prediction's top finding (a single-label run's called class), else the most
        probable."""
        spec = (spec or "auto").strip()
        if len(spec) > HEATMAP_SPEC_CHARS:
            raise BadRequest(f"heatmaps= is {len(spec)} characters; at most {HEATMAP_SPEC_CHARS}")
        top = top or max(probs, key=probs.get)
        if spec == "none":
            return []
        if spec == "all":
            return list(self.findings)
        if spec == "top":
            return [top]
        if spec == "positive":
            return [f for f in self.findings if f in positive]
        if spec == "auto":
            return [f for f in self.findings if f in positive or f == top]
        # each finding once: a name repeated 2,048 times once cost 20 s and 2.4 GB
        names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
        unknown = [n for n in names if n not in self.findings]
        if unknown or not names:
            raise BadRequest(
                f"heatmaps={spec!r}: unknown finding(s) {unknown}; use one of "
                f"{', '.join(HEATMAP_CHOICES)} or comma-separated names from {self.findings}"
            )
        return names

    def check_gate(self, decoded: Decoded, pixels, features, name: str) -> dict:
        """The run's OOD gate on the preprocessed pixels (and the prediction's own features,
        when the backend gave them): what was checked; NotAChestXray when it refuses."""
        if self.gate is None:
            return {"checked": False, "reason": self.gate_note}
        result = self.gate.check_preprocessed(
            pixels, image=decoded.image, raw=decoded.colour, features=features
        )
        return gate_verdict(result, name)

    def check_colour(self, decoded: Decoded, name: str) -> None:
        if self.cfg.colour_check:
            check_colour(decoded, name)

    def analyse(
        self,
        data: bytes,
        name: str,
        heatmaps: str | None = "auto",
        images: bool = True,
        overlays: bool = False,
        depth: int = 8,
        layer: str = "last",
        keep_display: Callable[[bytes], dict | None] | None = None,
        waiter: Waiter | None = None,
    ) -> dict:
        """One file's answer: findings, calls, heatmaps, a JPEG preview, timings, notice.

        keep_display (the web API's display cache) takes the lossless display PNG, at `depth`
        bits (16 keeps a DICOM's or 16-bit PNG's depth for window/level), and answers where the
        browser fetches it: the PNG is never inline, so the answer stays small. layer picks the
        Grad-CAM block (layer3: a grid twice as fine).
        `waiter`: the caller's deadline while its image waits for a batched model call.
        """
        start = time.perf_counter()
        timing: dict[str, float] = {}
        self.heatmap_findings(heatmaps, dict.fromkeys(self.findings, 0.0), set())  # fail early
        if depth not in (8, 16):
            raise BadRequest(f"depth={depth!r}: expected 8 or 16 (bits of the preview PNG)")
        if layer not in HEATMAP_LAYERS:
            raise BadRequest(f"heatmap_layer={layer!r}: expected one of {list(HEATMAP_LAYERS)}")
        layer = HEATMAP_LAYERS[layer]
        decoded = decode_upload(
            data, name, self.cfg.max_pixels, DecodeOptions(allow_modality=self.cfg.allow_modality)
        )
        # the header's doubts, then the decoder's choices (e.g. a fallback window)
        warnings_ = [decoded.caution] if decoded.caution else []
        warnings_ += decoded.warnings
        timing["decode"] = time.perf_counter() - start
        self.check_colour(decoded, name)
        # One forward pass: the probabilities, and on PyTorch the features the OOD gate scores;
        # shared with concurrent requests when the server batches them (cfg.max_batch > 1).
        prediction, features = self._predict(decoded.image, waiter)
        timing["predict"] = prediction.seconds
        tick = time.perf_counter()
        ood = self.check_gate(decoded, prediction.preprocessed, features, name)
        timing["checks"] = time.perf_counter() - tick
        if ood.get("ok") is False:  # the gate is set to warn, not refuse
            warnings_.append(ood_warning(ood))
        answer = prediction.as_dict()
        answer["findings"] = [grade(f, self.bands[f["finding"]]) for f in answer["findings"]]
        probs = {f["finding"]: f["probability"] for f in answer["findings"]}
        positive = {f["finding"] for f in answer["findings"] if f["positive"]}
        wanted = self.heatmap_findings(heatmaps, probs, positive, prediction.top_finding)

        maps = {}
        if wanted:
            tick = time.perf_counter()
            maps, note = self._heatmaps(decoded.image, wanted, layer)
            timing["heatmaps"] = time.perf_counter() - tick
            if note:
                warnings_.append(note)

        tick = time.perf_counter()
        h, w = decoded.image.shape
        shown = display_size((h, w), self.cfg.display_size)
        unit = _resize(decoded.image, shown)
        grey = (unit * 255 + 0.5).astype(np.uint8)
        # measured on the torch model: not built for it on ONNX when no map was asked for
        grid = self.heatmap_grid(layer) if maps or self.predictor.model_built else None
        side = int(np.clip((grid or 0) * HEATMAP_PIXELS_PER_CELL, *HEATMAP_SIZE))
        small = display_size((h, w), min(side, self.cfg.display_size))
        answer.update(
            file=name,
            top_finding=prediction.top_finding,
            image={
                "width": w,
                "height": h,
                "display_width": shown[1],
                "display_height": shown[0],
            },
            heatmap_method="gradcam",
            heatmap_layer=layer,
            heatmap_grid=grid,
            heatmap_notes=heatmap_notes(maps),
            heatmaps={f: _heatmap_url(_resize(m, small)) for f, m in maps.items()},
            dicom=decoded.dicom,
            ood=ood,
            warnings=warnings_,
        )
        if images:
            preview = _resize(grey, display_size((h, w), min(PREVIEW_SIZE, self.cfg.display_size)))
            answer["image"]["original"] = jpeg_data_url(preview)
            answer["image"]["preview_width"] = preview.shape[1]
            answer["image"]["preview_height"] = preview.shape[0]
            seen = prediction.preprocessed
            answer["image"]["preprocessed"] = (
                png_data_url(seen, 9)
                if max(seen.shape) <= MODEL_VIEW_LOSSLESS
                else jpeg_data_url(seen, MODEL_VIEW_QUALITY)
            )
            if keep_display is not None:
                lossless = grey if depth == 8 else (unit * 65535 + 0.5).astype(np.uint16)
                data = png_bytes(lossless)
                where = keep_display(data)
                answer["image"]["depth"] = depth
                answer["image"]["display"] = where and {
                    **where,
                    "depth": depth,
                    "width": shown[1],
                    "height": shown[0],
                    "bytes": len(data),
                }
        if overlays and maps:
            answer["overlays"] = self._overlays(grey, maps, shown)
        timing["encode"] = time.perf_counter() - tick
        timing["total"] = time.perf_counter() - start
        answer["timing"] = {k: round(v, 5) for k, v in timing.items()}
        answer["seconds"] = round(timing["total"], 5)
        answer["notice"] = NOT_A_MEDICAL_DEVICE
        return answer

    def heatmap_grid(self, layer: str) -> int | None:
        """Cells a side of the Grad-CAM layer's grid: the map's true resolution (measured once
        per layer with a forward pass of a blank image, under the model lock)."""
        if layer not in self._grids:
            try:
                from cxr.explain.gradcam import feature_grid
            except ImportError:
                return None
            with self._model_lock:
                size = int(self.info["image_size"])
                self._grids[layer] = feature_grid(self.predictor.model, size, layer)
        return self._grids[layer]

    def _heatmaps(
        self, image: np.ndarray, wanted: list[str], layer: str = "last"
    ) -> tuple[dict, str | None]:
        try:
            from cxr.explain.gradcam import heatmaps
        except ImportError:
            return {}, "Grad-CAM is not available in this install (cxr.explain.gradcam is missing)"
        # No lock: cxr.explain.gradcam computes on its own locked copy of the model.
        maps = heatmaps(self.predictor, image, findings=wanted, method="gradcam", layer=layer)
        return {f: np.asarray(maps[f], dtype=np.float32) for f in wanted if f in maps}, None

    def _overlays(self, grey: np.ndarray, maps: dict, shown: tuple[int, int]) -> dict[str, str]:
        return {f: png_data_url(overlay(grey, _resize(m, shown))) for f, m in maps.items()}


def _heatmap_url(level: np.ndarray) -> str:
    """A map at PNG size -> its RGBA PNG data URL, in HEATMAP_LEVELS steps (small, see above)."""
    steps = np.round(np.clip(level, 0.0, 1.0) * HEATMAP_LEVELS) / HEATMAP_LEVELS
    return png_data_url(heatmap_rgba(steps), 9)


def heatmap_notes(maps: dict[str, np.ndarray]) -> dict[str, str]:
    """Why a map shows nothing useful: empty (no positive evidence anywhere), or the same
    picture as another finding's (the caption would otherwise claim a finding-specific map)."""
    notes: dict[str, str] = {}
    names = list(maps)
    for i, name in enumerate(names):
        m = maps[name]
        if not np.isfinite(m).all() or float(np.max(m)) <= 1e-6:
            notes[name] = "empty: Grad-CAM found no positive evidence for this finding"
            continue
        for other in names[:i]:
            if other not in notes and np.allclose(m, maps[other], atol=1e-3):
                notes[name] = f"identical to the map for {other}"
                break
    return notes


def _val_metrics(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "val_metrics.json").read_text())
    except (OSError, ValueError):
        return None
