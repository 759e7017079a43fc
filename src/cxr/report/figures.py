"""The report's pictures: ROC, PR, calibration and subgroup plots, and a Grad-CAM gallery of
the most confident true and false positives per finding.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from cxr.data.table import load_image
from cxr.errors import CxrError
from cxr.explain import heatmaps, overlay
from cxr.inference import Predictor
from cxr.metrics import compute_metrics
from cxr.report.analysis import ScoredImages, known_mask

GALLERY_PER_KIND = 3  # most confident true and false positives shown per finding...
GALLERY_MAX = 36  # ...fewer per finding when there are many findings (Grad-CAM costs ~1 s each)


def draw_figures(report, test: ScoredImages, arrays, findings, task, out_dir: Path) -> dict:
    from cxr.plots import (
        plot_confusion,
        plot_operating_points,
        plot_reliability,
        plot_subgroup_auroc,
    )

    probs, thresholds = arrays["probs"], arrays["thresholds"]
    points = {f"{m} (val)": t for m, t in thresholds.items()}
    figures = {
        "roc": plot_operating_points(test.labels, probs, findings, points, out_dir / "roc.png"),
        "pr": plot_operating_points(
            test.labels, probs, findings, points, out_dir / "pr.png", kind="pr"
        ),
    }
    at_youden = compute_metrics(test.labels, probs, findings, task, thresholds["youden"])
    figures["confusion"] = plot_confusion(at_youden, out_dir / "confusion.png")
    cal = report["results"]["calibration"]
    figures["reliability"] = plot_reliability(
        {
            "before (T = 1)": cal["reliability_before"] | {"ece": cal["ece_before"]},
            f"after (T = {cal['temperature']:.2f})": cal["reliability_after"]
            | {"ece": cal["ece_after"]},
        },
        out_dir / "reliability.png",
    )
    rows = []
    for group in report["subgroups"].values():
        for level, entry in group["levels"].items():
            for name, f in entry["findings"].items():
                rows.append(
                    {
                        "finding": name,
                        "subgroup": f"{group['label']} {level}",
                        "n": entry["n_images"],
                    }
                    | {k: f["auroc"][k] for k in ("estimate", "low", "high")}
                )
    if rows:
        overall = {n: v["auroc"]["estimate"] for n, v in report["results"]["findings"].items()}
        figures["subgroups"] = plot_subgroup_auroc(rows, overall, out_dir / "subgroups.png")
    return figures


def gallery_entries(
    run_dir, table, test: ScoredImages, arrays, findings, progress
) -> tuple[list, str]:
    """Most confident true and false positives per finding at the Youden point, with Grad-CAM."""
    probs, thresholds = arrays["probs"], arrays["thresholds"]["youden"]
    per_kind = max(1, min(GALLERY_PER_KIND, GALLERY_MAX // (2 * len(findings))))
    chosen = []
    for j, name in enumerate(findings):
        known = known_mask(test.labels, j)
        above = known & (probs[:, j] >= thresholds[j])
        for kind, label in (("true positive", 1), ("false positive", 0)):
            index = np.flatnonzero(above & (np.nan_to_num(test.labels[:, j], nan=-1) == label))
            top = index[np.argsort(-probs[index, j], kind="stable")][:per_kind]
            chosen += [(name, kind, int(i)) for i in top]
    if not chosen:
        return [], "no positive calls at the Youden thresholds: nothing to show"
    predictor = Predictor.from_run_dir(run_dir)
    entries = []
    for name, kind, i in tqdm(
        chosen, desc="Grad-CAM", unit="img", disable=not progress, leave=False
    ):
        image = load_image(table, i)
        heatmap = heatmaps(predictor, image, [name], "gradcam")[name]
        rgb = np.asarray(overlay(image, heatmap), dtype=np.uint8)
        side = 224 / max(rgb.shape[:2])
        if side < 1:
            rgb = cv2.resize(rgb, None, fx=side, fy=side, interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise CxrError(f"could not encode the Grad-CAM overlay of {table.keys[i]}")
        entries.append(
            {
                "finding": name,
                "kind": kind,
                "key": table.keys[i],
                "probability": float(probs[i, findings.index(name)]),
                "png": png.tobytes(),
            }
        )
    return entries, "Grad-CAM on the calibrated model, most confident cases first"
