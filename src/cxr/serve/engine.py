"""Bytes in, a JSON-ready answer out: the one path behind `POST /api/predict` and `cxr predict`.

Flask-free on purpose, so the web API and the folder CLI are two thin doors onto the same checks:
decode (size and pixel limits) -> refuse colour photographs -> the run's out-of-distribution gate
(when the run has one) -> `Predictor.predict` -> Grad-CAM for the findings asked for -> PNGs for
the browser. Nothing here writes to disk.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.data.image_io import decode_bytes
from cxr.errors import ConfigError, CxrError, DataError
from cxr.serve.model_info import model_info

# Colour check: a chest X-ray stored as RGB has R = G = B up to compression noise (a few grey
# levels); a photograph has saturated pixels almost everywhere. A pixel counts as coloured when
# its channels differ by more than 40 of 255 levels, and an image is refused when over 15% of
# its pixels are coloured, so a small coloured ruler or annotation on a radiograph still passes.
COLOUR_LEVELS = 40
COLOUR_FRACTION = 0.15
_COLOUR_SAMPLE = 256  # the colour check looks at a copy at most this wide: enough, and cheap
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}

HEATMAP_CHOICES = ("auto", "none", "top", "positive", "all")
# Grad-CAM is a 7 x 7 grid at 224 px: a 256 px PNG carries all of it, and the browser stretches
# it over the preview. At the preview's 1024 px an RGBA PNG cost ~10x more to encode and send.
HEATMAP_SIZE = 256


class ServeConfig(BaseModel):
    """How the API serves one run; every field has a `cxr serve` flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="run folder written by `cxr train`")
    device: str = "cpu"
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="onnx: ONNX Runtime on RUN/model.onnx (`cxr export` first)"
    )
    max_upload_mb: float = Field(32.0, gt=0, description="largest accepted file")
    max_pixels: int = Field(40_000_000, gt=0, description="larger images are refused unread")
    max_batch_files: int = Field(32, ge=1)
    max_batch_mb: float = Field(128.0, gt=0, description="largest batch request")
    save_uploads: str | None = Field(None, description="folder to keep uploads in; off if None")
    web_dir: str | None = Field(None, description="built front end; None: web/dist if built")
    ood_gate: bool = Field(True, description="use the run's out-of-distribution gate, if any")
    colour_check: bool = True
    display_size: int = Field(1024, ge=64, le=4096, description="long side of returned images")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * 1024 * 1024)


def serve_config(raw: ServeConfig | dict) -> ServeConfig:
    if isinstance(raw, ServeConfig):
        return raw
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"serve config: {fields}") from None


class NotAChestXray(DataError):
    """The file decoded, but it is plainly not a chest radiograph (colour photo, OOD gate)."""

    def __init__(self, message: str, path: str | None = None, ood: dict | None = None):
        super().__init__(message, path=path)
        self.ood = ood


class BadRequest(CxrError):
    """A request parameter is wrong; the message names it and the accepted values."""


@dataclass
class Decoded:
    image: np.ndarray  # float32 (H, W) in [0, 1]: the intensity contract
    colour: np.ndarray | None  # small RGB uint8 copy when the file stores colour, else None
    coloured_fraction: float  # share of clearly coloured pixels (0 for grey files)


def decode_upload(data: bytes, name: str, max_pixels: int) -> Decoded:
    """decode_bytes (limits, DICOM, clear errors) plus a small colour copy for the checks."""
    image = decode_bytes(data, name=name, max_pixels=max_pixels)
    colour = _colour_sample(data)
    fraction = 0.0 if colour is None else coloured_fraction(colour)
    return Decoded(image, colour, fraction)


def coloured_fraction(rgb: np.ndarray) -> float:
    """Share of pixels whose channels differ by more than COLOUR_LEVELS of 255."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    return float(np.mean(spread > COLOUR_LEVELS))


def _colour_sample(data: bytes) -> np.ndarray | None:
    """RGB uint8 (at most _COLOUR_SAMPLE wide) for colour PNG/JPEG/BMP/TIFF; None otherwise.

    Called after decode_bytes accepted the file, so sizes are already within the limits.
    """
    from PIL import Image

    if data[128:132] == b"DICM":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if img.mode in _GREY_MODES:
                    return None
                img.draft("RGB", (_COLOUR_SAMPLE, _COLOUR_SAMPLE))  # JPEG: decode at 1/2..1/8
                rgb = np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - decode_bytes already read it; a PIL quirk skips the check
        return None
    h, w = rgb.shape[:2]
    if w > _COLOUR_SAMPLE:
        rgb = cv2.resize(
            rgb,
            (_COLOUR_SAMPLE, max(1, round(h * _COLOUR_SAMPLE / w))),
            interpolation=cv2.INTER_AREA,
        )
    return rgb


def png_data_url(pixels: np.ndarray) -> str:
    """uint8 grey, RGB or RGBA pixels -> a PNG data URL (fast compression: latency matters)."""
    if pixels.ndim == 3:
        order = [2, 1, 0, 3][: pixels.shape[2]]  # RGB(A) -> OpenCV's BGR(A)
        pixels = pixels[..., order]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV fails only on shapes we never make
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


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


class Engine:
    """A run loaded once, with its checks; `analyse` answers one uploaded file."""

    def __init__(self, cfg: ServeConfig | dict):
        from cxr.inference import Predictor

        self.cfg = serve_config(cfg)
        self.run_dir = Path(self.cfg.model)
        self.predictor = Predictor.from_run_dir(self.run_dir, self.cfg.device, self.cfg.backend)
        self.gate, self.gate_note = (None, "turned off (--no-ood-gate)")
        if self.cfg.ood_gate:
            self.gate, self.gate_note = load_gate(self.run_dir, self.predictor.run)
        self.info = model_info(self.run_dir, self.predictor, self.gate, self.gate_note)
        self.started = time.time()
        # Many server threads, one model: forward passes take turns (no_grad inference would be
        # safe in parallel, but two at once only fight over the same cores).
        self._model_lock = threading.Lock()

    @property
    def findings(self) -> list[str]:
        return self.predictor.findings

    def heatmap_findings(self, spec: str | None, probs: dict[str, float], positive: set[str],
                         top: str | None = None):  # fmt: skip
        """Which findings get a heatmap: see HEATMAP_CHOICES, or comma-separated names. `top`:
        the prediction's top finding (a single-label run's called class), else the most
        probable."""
        spec = (spec or "auto").strip()
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
        names = [n.strip() for n in spec.split(",") if n.strip()]
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
        return self.ood_answer(result, name)

    def check_colour(self, decoded: Decoded, name: str) -> None:
        if self.cfg.colour_check and decoded.coloured_fraction > COLOUR_FRACTION:
            raise NotAChestXray(
                f"this looks like a colour photograph ({decoded.coloured_fraction:.0%} of its "
                "pixels are clearly coloured), not a chest X-ray; upload the radiograph itself "
                "(DICOM, or a greyscale PNG/JPEG export)",
                path=name,
            )

    def ood_answer(self, result, name: str) -> dict:
        """The gate's verdict as the API reports it; raises NotAChestXray when it refuses."""
        ood = {
            "checked": True,
            "ok": bool(result.ok),
            "score": _finite_or_none(result.score),
            "threshold": _finite_or_none(result.threshold),
            "reason": str(result.reason or ""),
            "action": str(getattr(result, "action", "refuse")),
        }
        checks = getattr(result, "checks", None)
        if checks:
            ood["checks"] = {
                check: {k: (_finite_or_none(v) if k in ("score", "limit") else v)
                        for k, v in c.items()}
                for check, c in checks.items()
            }  # fmt: skip
        if not result.ok and ood["action"] == "refuse":
            raise NotAChestXray(
                "the out-of-distribution check rejected this image as unlike the chest X-rays "
                f"the model was trained on ({ood['reason'] or 'score over threshold'}); "
                "predictions on it would be meaningless",
                path=name,
                ood=ood,
            )
        return ood

    def analyse(
        self,
        data: bytes,
        name: str,
        heatmaps: str | None = "auto",
        images: bool = True,
        overlays: bool = False,
    ) -> dict:
        """One file's answer: findings, calls, heatmaps, preview PNGs, timings, notice."""
        start = time.perf_counter()
        timing: dict[str, float] = {}
        self.heatmap_findings(heatmaps, dict.fromkeys(self.findings, 0.0), set())  # fail early
        decoded = decode_upload(data, name, self.cfg.max_pixels)
        timing["decode"] = time.perf_counter() - start
        self.check_colour(decoded, name)
        # One forward pass: the probabilities, and on PyTorch the features the OOD gate scores.
        with self._model_lock:
            prediction, features = self.predictor.predict_with_features(decoded.image)
        timing["predict"] = prediction.seconds
        tick = time.perf_counter()
        ood = self.check_gate(decoded, prediction.preprocessed, features, name)
        timing["checks"] = time.perf_counter() - tick
        warnings_ = []
        if ood.get("ok") is False:  # the gate is set to warn, not refuse
            warnings_.append(ood_warning(ood))
        answer = prediction.as_dict()
        probs = {f["finding"]: f["probability"] for f in answer["findings"]}
        positive = {f["finding"] for f in answer["findings"] if f["positive"]}
        wanted = self.heatmap_findings(heatmaps, probs, positive, prediction.top_finding)

        maps = {}
        if wanted:
            tick = time.perf_counter()
            maps, note = self._heatmaps(decoded.image, wanted)
            timing["heatmaps"] = time.perf_counter() - tick
            if note:
                warnings_.append(note)

        tick = time.perf_counter()
        h, w = decoded.image.shape
        shown = display_size((h, w), self.cfg.display_size)
        grey = (_resize(decoded.image, shown) * 255 + 0.5).astype(np.uint8)
        small = display_size((h, w), min(HEATMAP_SIZE, self.cfg.display_size))
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
            heatmaps={f: png_data_url(heatmap_rgba(_resize(m, small))) for f, m in maps.items()},
            ood=ood,
            warnings=warnings_,
        )
        if images:
            answer["image"]["original"] = png_data_url(grey)
            answer["image"]["preprocessed"] = png_data_url(prediction.preprocessed)
        if overlays and maps:
            answer["overlays"] = self._overlays(grey, maps, shown)
        timing["encode"] = time.perf_counter() - tick
        timing["total"] = time.perf_counter() - start
        answer["timing"] = {k: round(v, 5) for k, v in timing.items()}
        answer["seconds"] = round(timing["total"], 5)
        answer["notice"] = NOT_A_MEDICAL_DEVICE
        return answer

    def _heatmaps(self, image: np.ndarray, wanted: list[str]) -> tuple[dict, str | None]:
        try:
            from cxr.explain import heatmaps
        except ImportError:
            return {}, "Grad-CAM is not available in this install (cxr.explain is missing)"
        # No lock: cxr.explain computes on its own locked copy of the model.
        maps = heatmaps(self.predictor, image, findings=wanted, method="gradcam")
        return {f: np.asarray(maps[f], dtype=np.float32) for f in wanted if f in maps}, None

    def _overlays(self, grey: np.ndarray, maps: dict, shown: tuple[int, int]) -> dict[str, str]:
        from cxr.explain import overlay

        return {f: png_data_url(overlay(grey, _resize(m, shown))) for f, m in maps.items()}


def ood_warning(ood: dict) -> str:
    """What a prediction carries when the gate is set to warn and the image failed it."""
    return (
        f"Out-of-distribution warning: {ood['reason']}. The model was not trained on "
        "images like this one; treat its output as meaningless."
    )


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def load_gate(run_dir: Path, run=None):
    """(gate, note): the run's OOD gate, or None and why not (module or gate file missing)."""
    try:
        from cxr.ood import GATE_FILE, OodGate
    except ImportError:
        return None, "no out-of-distribution gate in this install (cxr.ood is missing)"
    if not (run_dir / GATE_FILE).is_file():
        return None, f"none in this run (fit one with `cxr ood-fit --model {run_dir}`)"
    gate = OodGate.load(run_dir, run=run)  # a broken gate file stops start-up: never ignored
    action = getattr(getattr(gate, "config", None), "action", "refuse")
    return gate, f"on ({action}s when an image fails)"
