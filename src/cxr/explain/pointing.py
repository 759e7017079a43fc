"""The pointing game: does a heatmap point at the lesion? On SYNTHETIC phantoms, whose lesion
masks are known, against random and centre-peaked maps on the same grid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cxr.data.image_io import decode_image
from cxr.data.synthetic import load_masks
from cxr.errors import CxrError
from cxr.explain.gradcam import Explainable, feature_grid, heatmap_for_preprocessed, to_original


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> bool:
    """Whether the heatmap's maximum lies in the mask dilated by `tolerance_px` pixels.

    A flat map (no maximum, e.g. all zero) is a miss.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != mask.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {mask.shape} differ in shape")
    if not heat.size or float(heat.max()) <= float(heat.min()):
        return False
    region = dilate(mask, tolerance_px)
    return bool(region.flat[int(np.argmax(heat))])


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total mass that lies inside the (undilated) mask; 0 for a 0 map."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = heat.sum()
    return float(heat[mask].sum() / total) if total > 0 else 0.0


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """The mask grown by a disk of `radius_px` pixels (0: unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    if radius_px <= 0:
        return mask
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1,) * 2)
    return cv2.dilate(mask.astype(np.uint8), disk) > 0


def same_side(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the heatmap has more mass in the image half (left / right) holding more mask.

    A check a centre-biased map cannot pass for a one-sided lesion (effusion, pneumothorax).
    """
    w = mask.shape[1]
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    lesion_right = mask[:, w // 2 :].sum() > mask[:, : w // 2].sum()
    left, right = heat[:, : w // 2].sum(), heat[:, w - w // 2 :].sum()
    return bool(right > left) if lesion_right else bool(left > right)


def pointing_game(
    predictor: Explainable,
    root: str | Path,
    keys: list[str],
    finding: str,
    method: str = "gradcam",
    layer: str = "last",
    tolerance: float = 0.03,
    random_draws: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Does the heatmap point at the planted lesion? On SYNTHETIC phantoms with known masks.

    Over the images of `keys` that have `finding` planted (a mask in `root`/masks), per map:
    hit_rate: share whose heatmap maximum lies inside the lesion mask dilated by
        `tolerance` x the image's long side (3%: 4 px at 128 px, 8 px at 256 px), the usual
        allowance of the pointing game for a map that is coarse by construction; a flat map
        is a miss;
    mass_inside: mean share of heatmap mass inside the undilated mask;
    side_rate: share whose heatmap mass leans to the lesion's half of the image (`same_side`);
    random_*: the same for random maps: uniform noise on the same grid as the heatmap (S / 32 a
        side for the last layer), put on the image exactly as Grad-CAM is (bilinear, pad removed),
        `random_draws` per image, seeded;
    centre_*: a map peaked at the image centre: a pointing game a central lesion lets a
        constant map win (centre_side_rate is 0: a symmetric map leans nowhere);
    mask_area: mean share of the image the mask covers (the mass a uniform map would score).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    grid = feature_grid(predictor.model, predictor.run.config.preprocess.image_size, layer)
    scores: dict[str, list[np.ndarray]] = {"": [], "random_": [], "centre_": []}
    areas, radii = [], []
    iterator = keys
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(keys, desc=f"pointing game {finding}", unit="img", leave=False)
    for key in iterator:
        masks = load_masks(root, key)
        if finding not in masks:
            continue
        path = Path(key) if Path(key).is_file() else root / "images" / Path(key).name
        image = decode_image(path)
        mask = masks[finding]
        if mask.shape != image.shape:
            mask = cv2.resize(mask.astype(np.uint8), image.shape[::-1], cv2.INTER_NEAREST) > 0
        radius = max(1, round(tolerance * max(image.shape)))
        pixels, geometry = predictor.prepare(image)
        maps = heatmap_for_preprocessed(predictor, pixels, [finding], method, layer=layer)

        def score(heat: np.ndarray, mask=mask, radius=radius) -> np.ndarray:
            hit = pointing_hit(heat, mask, radius)
            return np.array([hit, mass_inside(heat, mask), same_side(heat, mask)], np.float64)

        randoms = [
            score(to_original(rng.random((grid, grid), dtype=np.float32), geometry))
            for _ in range(random_draws)
        ]
        scores[""].append(score(to_original(maps[finding], geometry)))
        scores["random_"].append(np.mean(randoms, axis=0))
        scores["centre_"].append(score(to_original(_centre_map(grid), geometry)))
        areas.append(float(mask.mean()))
        radii.append(radius)
    if not areas:
        raise CxrError(f"no image among the {len(keys)} given has a {finding} mask in {root}")
    out = {"finding": finding, "method": method, "layer": layer, "n_images": len(areas)}
    for prefix, rows in scores.items():
        mean = np.mean(rows, axis=0)
        out |= {
            f"{prefix}hit_rate": float(mean[0]),
            f"{prefix}mass_inside": float(mean[1]),
            f"{prefix}side_rate": float(mean[2]),
        }
    out |= {"mask_area": float(np.mean(areas)), "tolerance_px": int(np.median(radii)), "grid": grid}
    return out


def _centre_map(grid: int) -> np.ndarray:
    """A map on the Grad-CAM grid that peaks at its centre."""
    centre = (grid - 1) / 2
    yy, xx = np.mgrid[0:grid, 0:grid]
    return (1.0 / (1.0 + (yy - centre) ** 2 + (xx - centre) ** 2)).astype(np.float32)


def format_pointing_table(results: list[dict]) -> str:
    """Pointing-game results as an aligned text table, one row per finding (and method)."""
    head = (
        f"{'finding':<14}{'method':<11}{'n':>4} | {'hit':>6}{'random':>7}{'centre':>7} | "
        f"{'mass':>6}{'random':>7}{'mask':>6} | {'side':>6}{'random':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['finding']:<14}{r['method']:<11}{r['n_images']:>4} | {r['hit_rate']:>6.2f}"
            f"{r['random_hit_rate']:>7.2f}{r['centre_hit_rate']:>7.2f} | {r['mass_inside']:>6.2f}"
            f"{r['random_mass_inside']:>7.2f}{r['mask_area']:>6.2f} | {r['side_rate']:>6.2f}"
            f"{r['random_side_rate']:>7.2f}"
        )
    return "\n".join(lines)
