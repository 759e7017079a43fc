"""One SYNTHETIC chest-radiograph phantom, drawn by code: anatomy, planted findings with their
masks, and the acquisition (pose, exposure, blur, noise). `cxr.data.synthetic` writes a data set
of them to disk.

Reproducibility design: `make_phantom` draws the anatomy, the acquisition and one child seed per
finding in a fixed order, whatever findings are planted. Planting or removing a finding
therefore changes pixels only in (and a blur radius around) its mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

FINDINGS = ("Effusion", "Cardiomegaly", "Nodule", "Pneumothorax")
PREVALENCE = {"Effusion": 0.30, "Cardiomegaly": 0.30, "Nodule": 0.30, "Pneumothorax": 0.25}
GENERATOR_VERSION = 1
_Rng = np.random.Generator
_Masks = dict[str, np.ndarray]


def make_phantom(
    rng: np.random.Generator, size: int = 256, findings: set[str] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A float32 image in [0, 1] (air dark, bone bright) and a bool mask per planted finding.

    findings=None plants each finding independently with probability PREVALENCE[finding].
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    if findings is not None:
        unknown = set(findings) - set(FINDINGS)
        if unknown:
            raise ValueError(f"unknown findings {sorted(unknown)}; expected some of {FINDINGS}")
    # Fixed draw order, whatever is planted: see the module docstring.
    u = rng.random(len(FINDINGS))
    seeds = rng.integers(0, 2**63 - 1, size=3 + len(FINDINGS))
    if findings is None:
        findings = {f for f, ui in zip(FINDINGS, u, strict=True) if ui < PREVALENCE[f]}
    child = {f: np.random.default_rng(s) for f, s in zip(FINDINGS, seeds[3:], strict=True)}

    lay = _draw_layout(np.random.default_rng(seeds[0]))
    anat = _render_anatomy(lay, np.random.default_rng(seeds[1]), size, "Cardiomegaly" in findings)
    img = anat.image
    masks: _Masks = {}
    if "Cardiomegaly" in findings:
        masks["Cardiomegaly"] = anat.heart
    for name, plant in (
        ("Effusion", _plant_effusion),
        ("Pneumothorax", _plant_pneumothorax),
        ("Nodule", _plant_nodule),
    ):
        if name in findings:
            masks[name] = plant(img, anat, lay, child[name])
    img, masks = _acquire(img, masks, np.random.default_rng(seeds[2]))
    return img, {f: masks[f] for f in FINDINGS if f in masks}


@dataclass
class _Layout:
    """Geometry in units of the image side; drawn before the findings so they cannot shift it."""

    cx: float  # midline
    half_w: float  # half the inner thoracic width (lung edge to lung edge)
    y_apex: float
    y_cp: float  # costophrenic angles
    dome: tuple[float, float]  # dome tops: image-left (patient right, higher), image-right
    med: float  # half width of the upper mediastinum
    ctr: tuple[float, float]  # cardiothoracic ratio: normal, enlarged
    heart_tilt: float  # degrees
    body_margin: float  # soft tissue outside the ribs
    y_hilum: float


def _draw_layout(rng: np.random.Generator) -> _Layout:
    half_w = rng.uniform(0.31, 0.37)
    y_apex = rng.uniform(0.10, 0.16)
    y_cp = y_apex + rng.uniform(0.52, 0.62)
    rise = rng.uniform(0.07, 0.11)
    return _Layout(
        cx=0.5 + rng.normal(0, 0.012),
        half_w=half_w,
        y_apex=y_apex,
        y_cp=y_cp,
        dome=(y_cp - rise - rng.uniform(0.01, 0.035), y_cp - rise),
        med=rng.uniform(0.045, 0.06),
        # Normal ~0.40-0.46; cardiomegaly is called above 0.5, planted at 0.56-0.66.
        ctr=(rng.uniform(0.40, 0.46), rng.uniform(0.56, 0.66)),
        heart_tilt=rng.uniform(15, 30),
        body_margin=rng.uniform(0.05, 0.09),
        y_hilum=y_apex + rng.uniform(0.40, 0.48) * (y_cp - y_apex),
    )


@dataclass
class _Anatomy:
    image: np.ndarray  # float32, before acquisition
    lungs: tuple[np.ndarray, np.ndarray]  # bool, image-left and image-right lung
    # The same lungs ignoring the heart, and clear of even an enlarged heart: findings are
    # placed with these so that planting Cardiomegaly does not move them.
    envelopes: tuple[np.ndarray, np.ndarray]
    clear: tuple[np.ndarray, np.ndarray]
    heart: np.ndarray  # bool
    aeration: np.ndarray  # what air in the lungs adds to soft tissue (darkness, rib contrast)
    markings: np.ndarray  # vessel layer as added to the lungs


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    yy.flags.writeable = xx.flags.writeable = False
    return xx, yy


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigma_px) if sigma_px > 0.3 else a


def _px(points: np.ndarray, size: int) -> np.ndarray:
    """Normalised (x, y) points to cv2's fixed-point pixels (shift=4) for sub-pixel drawing."""
    return np.round(np.asarray(points) * size * 16).astype(np.int32).reshape(-1, 1, 2)


def _pt(xy, size: int) -> tuple[int, int]:
    x, y = _px(xy, size).ravel()
    return int(x), int(y)


def _heart_mask(lay: _Layout, size: int, enlarged: bool) -> np.ndarray:
    """Tilted ellipse: a third of its width right of the midline, two thirds to image-right."""
    width = lay.ctr[1 if enlarged else 0] * 2 * lay.half_w
    t = np.deg2rad(lay.heart_tilt)
    k = (width / 2) / np.hypot(np.cos(t), 0.72 * np.sin(t))  # long semi-axis for that width
    a, b = k, 0.72 * k * (1.1 if enlarged else 1.0)
    half_h = np.hypot(a * np.sin(t), b * np.cos(t))
    centre = (lay.cx + width / 6, lay.dome[1] + 0.03 - half_h)
    mask = np.zeros((size, size), np.uint8)
    axes = (int(a * size * 16), int(b * size * 16))
    cv2.ellipse(mask, _pt(centre, size), axes, lay.heart_tilt, 0, 360, 1, -1, cv2.LINE_8, 4)
    return mask.astype(bool)


def _render_anatomy(lay: _Layout, rng: np.random.Generator, size: int, cardio: bool) -> _Anatomy:
    xx, yy = _grid(size)
    s1 = size / 256  # pixel scales were tuned at 256 px
    dx = xx - lay.cx
    # Soft tissue: a rounded trunk with shoulders and neck, thicker (brighter) in the middle.
    bw = lay.half_w + lay.body_margin
    trunk = (np.abs(dx / bw) ** 4 + np.abs((yy - 0.66) / 0.64) ** 4) <= 1
    neck = (np.abs(dx) < rng.uniform(0.09, 0.12)) & (yy < 0.2)
    out = np.abs(dx) - bw  # beyond the trunk: the arms, with a dark gap at the axilla
    arms = (out > 0.025) & (out < 0.16) & (yy > 0.1 + 0.3 * out)
    body = _blur((trunk | neck).astype(np.float32), 2.5 * s1)
    thick = 0.7 + 0.3 * np.sqrt(np.clip(1 - (dx / bw) ** 2, 0, 1))
    img = 0.03 + body * rng.uniform(0.42, 0.5) * thick
    img += _blur(arms.astype(np.float32), 3.0 * s1) * rng.uniform(0.2, 0.3)

    heart = _heart_mask(lay, size, cardio)
    knob = (xx - lay.cx - lay.med + 0.01) ** 2 + (yy - lay.y_apex - 0.17) ** 2 < 0.032**2
    column = (np.abs(dx) < lay.med) & (yy < lay.dome[0])
    centre = heart | knob | column
    img += _blur(centre.astype(np.float32), 2.0 * s1) * rng.uniform(0.10, 0.16)
    trachea = (np.abs(dx) < 0.012) & (yy < lay.y_apex + 0.17)
    img -= _blur(trachea.astype(np.float32), 1.5 * s1) * 0.06

    big_heart = heart if cardio else _heart_mask(lay, size, True)
    lungs, envelopes, clear = [], [], []
    for side, dome in zip((-1, 1), lay.dome, strict=True):
        a = rng.uniform(0.5, 0.56) * lay.half_w
        ex, ey = lay.cx + side * (lay.half_w - a), lay.y_cp - 0.02
        ellipse = ((xx - ex) / a) ** 2 + ((yy - ey) / (ey - lay.y_apex)) ** 2 <= 1
        xd = lay.cx + side * 0.5 * lay.half_w  # dome top; lateral end meets the wall at y_cp
        below_dome = yy < dome + (lay.y_cp - dome) * ((xx - xd) / (0.5 * lay.half_w)) ** 2
        envelope = ellipse & below_dome & (side * dx > lay.med) & ~knob & ~column
        envelopes.append(envelope)
        lungs.append(envelope & ~heart)
        clear.append(envelope & ~big_heart)
    lung_f = _blur((lungs[0] | lungs[1]).astype(np.float32), 1.5 * s1)
    # Darkest mid-lung laterally; bases and apices are overlapped by more soft tissue.
    depth = rng.uniform(0.26, 0.34) * (1 - 0.35 * ((yy - lay.y_hilum) / 0.35) ** 2)
    mottle = cv2.resize(
        rng.normal(0, 1, (8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    depth = (depth * (1 + 0.06 * mottle)).astype(np.float32)
    img -= lung_f * depth

    ribs, clavicles = _draw_ribs(lay, rng, size)
    img += clavicles * rng.uniform(0.08, 0.12)
    rib_contrast = ribs * body * 0.055 * lung_f  # air around the ribs shows them up
    img += ribs * body * 0.02 + rib_contrast
    spine = (np.abs(dx) < 0.032) * (0.7 + 0.3 * np.cos(2 * np.pi * (yy - lay.y_apex) / 0.047))
    img += _blur(spine.astype(np.float32), 1.2 * s1) * body * 0.045
    gas = ((xx - lay.cx - 0.45 * lay.half_w) / 0.06) ** 2 + ((yy - lay.dome[1] - 0.06) / 0.035) ** 2
    img -= _blur((gas < 1).astype(np.float32), 2.0 * s1) * rng.uniform(0.0, 0.12)  # stomach
    markings = _draw_markings(lay, rng, size) * lung_f
    img += markings
    aeration = lung_f * depth - markings - rib_contrast
    lungs, envelopes, clear = tuple(lungs), tuple(envelopes), tuple(clear)
    return _Anatomy(img.astype(np.float32), lungs, envelopes, clear, heart, aeration, markings)


def _draw_ribs(lay: _Layout, rng: np.random.Generator, size: int) -> tuple[np.ndarray, ...]:
    """Posterior ribs (near horizontal, curving down at the wall), anterior ribs; clavicles."""
    layer = np.zeros((size, size), np.float32)
    clavicles = np.zeros_like(layer)
    thick = max(2, round(size * rng.uniform(0.018, 0.024)))
    gap = (lay.y_cp - lay.y_apex) / rng.uniform(8.2, 9.2)
    u = np.linspace(0, 1, 14)
    for side in (-1, 1):
        x_wall = lay.half_w + 0.015
        for k in range(10):
            y0 = lay.y_apex - 0.035 + k * gap + rng.normal(0, 0.003)
            post = np.stack(
                [lay.cx + side * (0.025 + u * (x_wall - 0.025)), y0 - 0.045 * u + 0.12 * u**3],
                axis=1,
            )
            x1, y1 = post[-1]
            ant = np.stack(
                [x1 - side * u * 0.6 * lay.half_w, y1 + 0.01 + 0.16 * u - 0.04 * u**2], axis=1
            )
            cv2.polylines(layer, [_px(post, size)], False, 1.0, thick, cv2.LINE_AA, 4)
            cv2.polylines(
                layer, [_px(post, size)], False, 0.65, max(1, thick // 2), cv2.LINE_AA, 4
            )  # cortex brighter than medulla
            cv2.polylines(layer, [_px(ant, size)], False, 0.45, max(1, thick - 1), cv2.LINE_AA, 4)
        clav = np.array([[0.04, 0.05], [0.2, 0.01], [0.38, -0.04]]) * [side, 1]
        clav += [lay.cx, lay.y_apex]
        cv2.polylines(clavicles, [_px(clav, size)], False, 1.0, thick + 1, cv2.LINE_AA, 4)
    return _blur(layer, 0.8 * size / 256), _blur(clavicles, 1.0 * size / 256)


def _draw_markings(lay: _Layout, rng: np.random.Generator, size: int) -> np.ndarray:
    """Vessels fanning out from each hilum, thinning and fading toward the periphery."""
    layer = np.zeros((size, size), np.float32)
    w0 = max(1, round(size / 128))
    for side in (-1, 1):
        hx, hy = lay.cx + side * (lay.med + 0.035), lay.y_hilum
        cv2.circle(layer, _pt((hx, hy), size), int(0.03 * size * 16), 0.9, -1, cv2.LINE_AA, 4)
        for _ in range(14):
            angle = rng.uniform(-1.9, 1.3)  # radians from lateral; negative is upward
            length = rng.uniform(0.12, 0.3)
            direction = np.array([side * np.cos(angle), np.sin(angle)])
            normal = np.array([-direction[1], direction[0]])
            t = np.linspace(0, 1, 5)[:, None]
            bend = np.cumsum(rng.normal(0, 0.012, (5, 1)), axis=0)
            pts = np.array([hx, hy]) + t * length * direction + bend * normal
            for j in range(4):
                a, b = _pt(pts[j], size), _pt(pts[j + 1], size)
                cv2.line(layer, a, b, 1.0 - 0.18 * j, max(1, w0 - j // 2), cv2.LINE_AA, 4)
            fork = pts[2] + rng.uniform(0.05, 0.1) * (direction + normal * rng.choice([-1, 1]))
            cv2.line(layer, _pt(pts[2], size), _pt(fork, size), 0.55, 1, cv2.LINE_AA, 4)
    return _blur(layer, 0.7 * size / 256) * rng.uniform(0.07, 0.11)


# ---------------------------------------------------------------- planted findings


def _plant_effusion(img: np.ndarray, anat: _Anatomy, lay: _Layout, rng: _Rng) -> np.ndarray:
    """Fluid fills a lung base up to a meniscus that climbs the lateral wall: blunted angle."""
    size = img.shape[0]
    xx, yy = _grid(size)
    side = int(rng.integers(2))
    sgn = -1 if side == 0 else 1
    lateral = np.clip(sgn * (xx - lay.cx) / lay.half_w, 0, 1)  # 0 midline, 1 chest wall
    # Level just above the dome medially, climbing ~0.08 higher at the wall (the meniscus).
    meniscus = lay.dome[side] - rng.uniform(0.0, 0.1) - rng.uniform(0.05, 0.1) * lateral**2
    # Largest part twice: first independent of the heart size, then drop what the heart cut off.
    region = _largest_part(_largest_part(anat.envelopes[side] & (yy > meniscus)) & anat.lungs[side])
    soft = _blur(region.astype(np.float32), 1.0 * size / 256)
    fill = rng.uniform(0.8, 0.95)
    img += soft * fill * anat.aeration  # fluid has soft-tissue density: no air, no vessels
    return region


def _plant_pneumothorax(img: np.ndarray, anat: _Anatomy, lay: _Layout, rng: _Rng) -> np.ndarray:
    """The lung shrinks toward its lower-medial corner; the gap at apex and side is dark air."""
    size = img.shape[0]
    side = int(rng.integers(2))
    sgn = -1 if side == 0 else 1
    envelope = anat.envelopes[side]
    f = rng.uniform(0.72, 0.86)
    ax, ay = (lay.cx + sgn * lay.med) * size, lay.dome[side] * size
    shrink = np.float32([[f, 0, ax * (1 - f)], [0, f, ay * (1 - f)]])
    collapsed = (
        cv2.warpAffine(envelope.astype(np.uint8), shrink, (size, size), flags=cv2.INTER_NEAREST) > 0
    )
    gap = _largest_part(envelope & ~collapsed)  # slivers at the dome are not the finding
    gap &= anat.lungs[side]
    kernel = np.ones((3, 3), np.uint8)
    near_gap = cv2.dilate(gap.astype(np.uint8), kernel, iterations=max(1, size // 256)) > 0
    line = collapsed & near_gap & anat.lungs[side]
    soft = _blur(gap.astype(np.float32), 0.6 * size / 256)
    img -= soft * (anat.markings + rng.uniform(0.04, 0.07))
    img += line * rng.uniform(0.07, 0.11)
    return gap | line


def _largest_part(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask
    return labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def _plant_nodule(img: np.ndarray, anat: _Anatomy, lay: _Layout, rng: _Rng) -> np.ndarray:
    """One round, soft-edged opacity well inside a lung."""
    size = img.shape[0]
    xx, yy = _grid(size)
    lung = anat.clear[int(rng.integers(2))].astype(np.uint8)
    radius = rng.uniform(0.018, 0.03)
    dist = cv2.distanceTransform(lung, cv2.DIST_L2, 3) / size
    inside = np.flatnonzero(dist > radius + 0.01)
    flat = inside[rng.integers(len(inside))] if len(inside) else int(dist.argmax())
    y0, x0 = (np.array(np.unravel_index(flat, lung.shape)) + 0.5) / size
    r = np.sqrt((xx - x0) ** 2 + (yy - y0) ** 2) / radius
    img += np.clip(1 - r**2, 0, 1) ** 0.6 * rng.uniform(0.13, 0.22)
    return r <= 1.15


# ---------------------------------------------------------------- acquisition


def _acquire(img: np.ndarray, masks: _Masks, rng: _Rng) -> tuple[np.ndarray, _Masks]:
    """Pose, exposure (gamma and window), focal blur and quantum noise, same for every mask."""
    size = img.shape[0]
    angle, scale = rng.uniform(-5, 5), rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.02, 0.02, 2) * size
    warp = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    warp[:, 2] += shift
    gamma, lo, hi = rng.uniform(0.75, 1.35), rng.uniform(0.0, 0.06), rng.uniform(0.9, 1.0)
    blur = rng.uniform(0.4, 1.2) * size / 256
    noise = rng.normal(0, rng.uniform(0.006, 0.02), (size, size)).astype(np.float32)

    img = cv2.warpAffine(
        img, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    img = lo + (hi - lo) * np.clip(img, 0, 1) ** gamma
    img = np.clip(_blur(img.astype(np.float32), blur) + noise, 0, 1).astype(np.float32)
    moved = {
        f: cv2.warpAffine(m.astype(np.float32), warp, (size, size), flags=cv2.INTER_LINEAR) > 0.5
        for f, m in masks.items()
    }
    return img, moved
