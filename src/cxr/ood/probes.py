"""SYNTHETIC inputs a chest X-ray gate must flag, drawn by code: colour photographs, hand
X-rays, blank frames and inverted X-rays. For checking a fitted gate (`cxr.ood.gate`) in tests and
`benchmarks/ood.py`; never training data.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def colour_photo(rng: np.random.Generator, h: int = 240, w: int = 320) -> np.ndarray:
    """A natural-looking colour scene (RGB uint8): sky gradient, hills, sun, a house."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = np.stack([90 + 80 * yy / h, 150 + 60 * yy / h, 235 - 20 * yy / h], axis=-1)
    img = sky.copy()
    horizon = h * rng.uniform(0.5, 0.65) + 15 * np.sin(xx / w * rng.uniform(4, 9))
    ground = yy > horizon
    img[ground] = np.stack([60 + 40 * xx / w, 140 - 30 * yy / h, 50 + 0 * xx], axis=-1)[ground]
    img = img.astype(np.uint8).copy()
    sun = (int(rng.uniform(0.6, 0.9) * w), int(rng.uniform(0.1, 0.3) * h))
    cv2.circle(img, sun, int(0.07 * w), (250, 220, 60), -1, cv2.LINE_AA)
    x0, y0 = int(rng.uniform(0.1, 0.5) * w), int(0.45 * h)
    cv2.rectangle(img, (x0, y0), (x0 + w // 5, y0 + h // 4), (180, 40, 40), -1)
    cv2.fillPoly(
        img,
        [np.array([(x0 - 10, y0), (x0 + w // 10, y0 - h // 8), (x0 + w // 5 + 10, y0)])],
        (120, 60, 30),
    )
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def hand_xray(rng: np.random.Generator, h: int = 256, w: int = 208) -> np.ndarray:
    """A grey hand radiograph: finger bones as bright bars (with joint gaps) over a palm."""
    img = np.full((h, w), 0.06, np.float32)
    soft = np.zeros_like(img)
    bone = np.zeros_like(img)
    palm = (w // 2 + int(rng.integers(-10, 10)), int(0.78 * h))
    cv2.ellipse(soft, palm, (int(0.32 * w), int(0.2 * h)), 0, 0, 360, 1.0, -1)
    for k, angle in enumerate(np.linspace(-35, 35, 5) + rng.normal(0, 3, 5)):
        a = np.deg2rad(angle)
        base = np.array([palm[0] + (k - 2) * 0.12 * w, palm[1] - 0.1 * h])
        length = h * (0.45 if k not in (0, 4) else 0.33)
        direction = np.array([np.sin(a), -np.cos(a)])
        tip = base + length * direction
        cv2.line(soft, tuple(base.astype(int)), tuple(tip.astype(int)), 1.0, 22)
        for j in range(3):  # three phalanges with joint gaps
            p0 = base + length * (j / 3 + 0.02) * direction
            p1 = base + length * ((j + 1) / 3 - 0.03) * direction
            cv2.line(bone, tuple(p0.astype(int)), tuple(p1.astype(int)), 1.0, 10)
    img += 0.3 * cv2.GaussianBlur(soft, (0, 0), 3) + 0.5 * cv2.GaussianBlur(bone, (0, 0), 1.5)
    return np.clip(img + rng.normal(0, 0.015, img.shape), 0, 1).astype(np.float32)


def probe_inputs(
    in_distribution: Sequence[np.ndarray] = (), seed: int = 0, per_kind: int = 4
) -> dict[str, list[tuple[np.ndarray, np.ndarray | None]]]:
    """(image, raw) pairs, per kind, of inputs a chest X-ray gate must flag: colour photographs,
    hand X-rays, blank frames and (from `in_distribution` decoded X-rays) inverted X-rays.

    SYNTHETIC probes drawn by code, to check a fitted gate (`cxr ood-fit`, tests, benchmarks).
    """
    from cxr.data.image_io import to_unit_grey

    rng = np.random.default_rng(seed)
    photos = [colour_photo(rng) for _ in range(per_kind)]
    blanks = [
        np.zeros((256, 256), np.float32),
        np.full((300, 240), 0.5, np.float32),
        np.ones((200, 200), np.float32),
        np.clip(0.4 + rng.normal(0, 0.01, (256, 256)), 0, 1).astype(np.float32),
    ]
    probes: dict[str, list[tuple[np.ndarray, np.ndarray | None]]] = {
        "colour photograph": [(to_unit_grey(p, "photo"), p) for p in photos],
        "hand X-ray": [(hand_xray(rng), None) for _ in range(per_kind)],
        "blank": [(b, None) for b in blanks[: max(per_kind, 1)]],
    }
    if len(in_distribution):
        probes["inverted X-ray"] = [
            (1.0 - np.asarray(image, np.float32), None) for image in in_distribution
        ]
    return probes
