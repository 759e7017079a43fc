"""Out-of-distribution gate: is this input plausibly a frontal chest X-ray like the training set?

A model answers every input with probabilities, a photograph of a cat included. The gate looks
at the input before the prediction is shown and warns, or refuses, as `OodConfig.action` says.
It runs these checks in order; the first that fails gives the reason:

1. colour: a radiograph is grey. Colourfulness (Hasler & Suesstrunk 2003) of the raw decoded
   pixels, measured before the grey conversion of the intensity contract (which would hide it).
   Above `colour_max` (0.06, i.e. 15 of 255: "not colourful" on their scale) it is a photograph.
2. blank: the grey range p99 - p1 of the original image. A radiograph spans most of its range;
   below `min_contrast` the frame is blank or near-constant.
3. inverted: a frontal chest X-ray has a bright mediastinum between dark lungs. The mean of a
   central strip minus that of the two lung fields (on the preprocessed image) is positive for
   nearly every training image and negative once the image is inverted (air bright, bone dark).
   The lower limit is a low percentile of training values less a margin.
4. layout: Mahalanobis distance of a 16 x 16 thumbnail of the preprocessed image from the
   training thumbnails (a PCA-like reconstruction check that does not depend on the model).
5. features: Mahalanobis distance of the model's penultimate features (global-average-pooled
   layer4) from the training features, the method of Lee et al. (NeurIPS 2018), one class.

Distances use a Ledoit-Wolf shrunk covariance (scikit-learn): with a few hundred images and 512
features the sample covariance is singular. Their thresholds are the `percentile` (99.5th) of
distances on held-out training images: the training split is cut in two, the mean and covariance
come from one part and the thresholds from the other, so the run's validation split stays free
for an honest false-refusal rate.

Saved in the run folder: ood.json (config, thresholds, numbers) and ood.safetensors (means and
precision matrices).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import Field, ValidationError

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import StrictConfig
from cxr.errors import ConfigError, CxrError, NotAChestXray
from cxr.preprocess import preprocess
from cxr.run import LoadedRun, load_run
from cxr.runtime import Runtime, forward

GATE_FILE = "ood.json"
TENSORS_FILE = "ood.safetensors"
GATE_VERSION = 1
MIDLINE_MARGIN = 0.05  # grey levels (of 1) below the training percentile before we call it
_REASONS = {
    "colour": "a colour image (a photograph?), not a grey radiograph",
    "blank": "a blank or near-constant image",
    "inverted": "no bright mediastinum between dark lungs: inverted, or not a frontal chest view",
    "layout": "its layout is unlike the training chest X-rays",
    "features": "far from the training images in the model's feature space",
}


class OodConfig(StrictConfig):
    """How the gate is fitted and what it does with an input that fails."""

    action: Literal["warn", "refuse"] = "warn"
    percentile: float = Field(99.5, gt=50.0, le=100.0, description="of held-out distances")
    midline_percentile: float = Field(0.5, ge=0.0, lt=50.0)
    calibration_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="training images held out")
    colour_max: float = Field(0.06, gt=0.0, description="colourfulness, 0-1 scale")
    min_contrast: float = Field(0.1, ge=0.0, lt=1.0, description="p99 - p1 of the grey image")
    thumbnail: int = Field(16, ge=4, le=64)
    seed: int = 0


@dataclass
class OodResult:
    """The gate's verdict on one input.

    ok: passed every check. score / threshold: of the check that failed (of the feature
    distance when all passed). reason: one sentence for a person. checks: every check's score,
    limit and verdict. action: what the gate's config says to do when not ok.
    """

    ok: bool
    score: float
    threshold: float
    reason: str
    action: str = "warn"
    checks: dict[str, dict] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return not self.ok and self.action == "refuse"

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "score": self.score,
            "threshold": self.threshold,
            "reason": self.reason,
            "action": self.action,
            "refused": self.refused,
            "checks": self.checks,
        }


# ---------------------------------------------------------------- statistics of one image


def colourfulness(raw: np.ndarray) -> float:
    """Hasler & Suesstrunk colourfulness of RGB(A) pixels on a 0-1 scale; 0 for grey input."""
    arr = np.asarray(raw)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2)):
        return 0.0
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"raw must be (H, W) or (H, W, 3/4) pixels, got shape {arr.shape}")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    rgb = arr[..., :3].astype(np.float64) / scale
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = np.hypot(rg.std(), yb.std())
    offset = np.hypot(rg.mean(), yb.mean())
    return float(spread + 0.3 * offset)


def contrast(image: np.ndarray) -> float:
    """Grey range between the 1st and 99th percentile of the image (intensity contract)."""
    lo, hi = np.percentile(np.asarray(image, dtype=np.float32), [1, 99])
    return float(hi - lo)


def midline_score(pixels: np.ndarray) -> float:
    """Mean of the central strip minus mean of both lung fields, preprocessed (S, S) uint8 / 255.

    Regions in units of the side: centre columns 0.45-0.55, lungs 0.15-0.35 and 0.65-0.85,
    rows 0.25-0.7: where the mediastinum and the lungs lie on a frontal view, padded or not.
    """
    unit = np.asarray(pixels, dtype=np.float32) / 255.0
    s = unit.shape[0]

    def cut(a: float, b: float) -> slice:
        return slice(round(a * s), max(round(b * s), round(a * s) + 1))

    rows = cut(0.25, 0.7)
    centre = unit[rows, cut(0.45, 0.55)].mean()
    lungs = np.concatenate(
        [unit[rows, cut(0.15, 0.35)].ravel(), unit[rows, cut(0.65, 0.85)].ravel()]
    ).mean()
    return float(centre - lungs)


def thumbnails(pixels: np.ndarray, side: int) -> np.ndarray:
    """(N, S, S) or (S, S) uint8 -> (N, side * side) float64 thumbnails in [0, 1] (area means)."""
    batch = np.asarray(pixels)
    if batch.ndim == 2:
        batch = batch[None]
    out = [
        cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        for p in batch
    ]
    return np.stack(out) / 255.0


def penultimate_features(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 preprocessed -> (N, F) float64: the model's pooled features (the batched
    forward of `cxr.runtime`, on the model's own device). A plain forward pass (no hooks), so it
    is safe beside predictions in other threads."""
    batch = np.asarray(pixels)
    if batch.ndim == 2:
        batch = batch[None]
    device = next(model.parameters()).device
    return forward(model, batch, Runtime(device, amp=False, channels_last=False))[1]


# ---------------------------------------------------------------- a Mahalanobis distance


@dataclass
class Mahalanobis:
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F), inverse of the shrunk covariance

    @classmethod
    def fit(cls, x: np.ndarray) -> Mahalanobis:
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(x)
        return cls(lw.location_.astype(np.float64), lw.precision_.astype(np.float64))

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(x) - self.mean
        return np.sqrt(np.maximum(np.einsum("nf,fg,ng->n", d, self.precision, d), 0.0))


# ---------------------------------------------------------------- the gate


class OodGate:
    """A fitted gate for one run. `check(image, raw)` judges one decoded image."""

    def __init__(
        self,
        run: LoadedRun,
        config: OodConfig,
        features: Mahalanobis,
        layout: Mahalanobis,
        limits: dict[str, float],
        info: dict,
    ):
        self.run = run
        self.config = config
        self.features = features
        self.layout = layout
        self.limits = limits  # feature_max, layout_max, midline_min, contrast_min, colour_max
        self.info = info

    # -- verdicts

    def check(self, image: np.ndarray, raw: np.ndarray | None = None) -> OodResult:
        """Judge a decoded image (float32 [0, 1] 2-D); raw: its pixels before the grey
        conversion (for the colour check), e.g. from `colour_sample(bytes)`; None skips that check.
        """
        pixels = preprocess(image, self.run.config.preprocess)
        return self.check_preprocessed(pixels, image=image, raw=raw)

    def check_preprocessed(
        self,
        pixels: np.ndarray,
        image: np.ndarray | None = None,
        raw: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> OodResult:
        """As `check`, when the preprocessed (S, S) uint8 pixels (and perhaps the model's
        pooled features of them, (1, F)) are already at hand."""
        score = None if image is None else contrast(image)
        return self.check_batch(np.asarray(pixels)[None], [raw], [score], features)[0]

    def check_batch(
        self,
        pixels: np.ndarray,
        raws: list[np.ndarray | None] | None = None,
        contrasts: list[float | None] | None = None,
        features: np.ndarray | None = None,
    ) -> list[OodResult]:
        """`check_preprocessed` for N images at once: one batched forward pass for the features
        (what `cxr predict` uses, so a folder costs one model call per batch, not per image).

        contrasts: `contrast(image)` of each decoded original (None skips the blank check),
        computed where the image was decoded, so a caller need not keep full-size images.
        features: the run model's `pooled_features` of these pixels when the caller already
        has them (the prediction computed them on the way to the logits); else computed.
        """
        batch = np.asarray(pixels)
        n = len(batch)
        raws = list(raws) if raws is not None else [None] * n
        contrasts = list(contrasts) if contrasts is not None else [None] * n
        if len(contrasts) != n or len(raws) != n:
            raise ValueError(
                f"{n} images need {n} raws and contrasts, got {len(raws)} and {len(contrasts)}"
            )
        if n == 0:
            return []
        layout = self.layout.distance(thumbnails(batch, self.config.thumbnail))
        if features is None:
            features = penultimate_features(self.run.model, batch)
        elif np.shape(features) != (n, self.features.mean.shape[0]):
            raise ValueError(
                f"features must be ({n}, {self.features.mean.shape[0]}), got {np.shape(features)}"
            )
        features = self.features.distance(np.asarray(features, dtype=np.float64))
        return [
            self._verdict(batch[i], contrasts[i], raws[i], float(layout[i]), float(features[i]))
            for i in range(n)
        ]

    def _verdict(self, pixels, contrast_score, raw, layout: float, features: float) -> OodResult:
        lim = self.limits
        checks: dict[str, dict] = {}

        def record(name: str, score: float, limit: float, passed: bool) -> None:
            checks[name] = {"score": score, "limit": limit, "ok": passed, "reason": _REASONS[name]}

        if raw is not None:
            c = colourfulness(raw)
            record("colour", c, lim["colour_max"], c <= lim["colour_max"])
        if contrast_score is not None:
            c = float(contrast_score)
            record("blank", c, lim["contrast_min"], c >= lim["contrast_min"])
        m = midline_score(pixels)
        record("inverted", m, lim["midline_min"], m >= lim["midline_min"])
        record("layout", layout, lim["layout_max"], layout <= lim["layout_max"])
        record("features", features, lim["feature_max"], features <= lim["feature_max"])

        failed = [name for name, c in checks.items() if not c["ok"]]
        decisive = checks[failed[0]] if failed else checks["features"]
        reason = (
            "plausibly a frontal chest X-ray like the training images"
            if not failed
            else f"not like the training images: {decisive['reason']} ({failed[0]} score "
            f"{decisive['score']:.3g}, limit {decisive['limit']:.3g})"
        )
        return OodResult(
            ok=not failed,
            score=float(decisive["score"]),
            threshold=float(decisive["limit"]),
            reason=reason,
            action=self.config.action,
            checks=checks,
        )

    def enforce(self, image: np.ndarray, raw: np.ndarray | None = None) -> OodResult:
        """`check`, raising NotAChestXray when the config says "refuse"."""
        result = self.check(image, raw)
        if result.refused:
            raise NotAChestXray(
                f"input refused by the out-of-distribution gate: {result.reason}. "
                + NOT_A_MEDICAL_DEVICE
            )
        return result

    # -- persistence

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write ood.json and ood.safetensors into the run folder; returns the JSON's path."""
        from safetensors.numpy import save_file

        run_dir = Path(run_dir or self.run.run_dir)
        tensors = {
            "feature_mean": self.features.mean,
            "feature_precision": self.features.precision,
            "layout_mean": self.layout.mean,
            "layout_precision": self.layout.precision,
        }
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(run_dir / TENSORS_FILE)
        )
        payload = {
            "version": GATE_VERSION,
            "config": self.config.model_dump(),
            "limits": self.limits,
            "info": self.info,
        }
        path = run_dir / GATE_FILE
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(
        cls, run_dir: str | Path, run: LoadedRun | None = None, action: str | None = None
    ) -> OodGate:
        """The gate saved in a run folder (`cxr ood-fit`); pass `run` to share a loaded model.

        action overrides the saved "warn"/"refuse".
        """
        from safetensors.numpy import load_file

        run_dir = Path(run_dir)
        path, tensors_path = run_dir / GATE_FILE, run_dir / TENSORS_FILE
        if not path.is_file() or not tensors_path.is_file():
            raise CxrError(
                f"{run_dir} has no out-of-distribution gate ({GATE_FILE} / {TENSORS_FILE} "
                f"missing): fit one with `cxr ood-fit --model {run_dir}`"
            )
        try:
            payload = json.loads(path.read_text())
            config = OodConfig.model_validate(payload["config"])
            if action is not None:
                config = config.model_copy(update={"action": action})
                OodConfig.model_validate(config.model_dump())
            limits = {k: float(v) for k, v in payload["limits"].items()}
            tensors = load_file(str(tensors_path))
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise ConfigError(f"{path}: not a valid gate file: {exc}") from None
        if payload.get("version") != GATE_VERSION:
            raise ConfigError(
                f"{path}: gate version {payload.get('version')}, expected "
                f"{GATE_VERSION}: refit with `cxr ood-fit`"
            )
        run = run or load_run(run_dir)
        features = Mahalanobis(tensors["feature_mean"], tensors["feature_precision"])
        layout = Mahalanobis(tensors["layout_mean"], tensors["layout_precision"])
        return cls(run, config, features, layout, limits, payload.get("info", {}))


_COLOUR_SAMPLE = 256  # the colour check looks at a copy at most this wide: enough, and cheap
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}


def colour_sample(data: bytes) -> np.ndarray | None:
    """The pixels of an encoded colour PNG/JPEG/BMP/TIFF before any grey conversion (which would
    hide colour), as RGB uint8 at most _COLOUR_SAMPLE wide; None for grey files and DICOM.
    The one source of "raw" pixels for both colour checks (the refusal and the gate's).

    Call it after decode_bytes accepted the file, so sizes are already within the limits.
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
