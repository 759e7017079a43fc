"""Evaluation figures saved as PNG: ROC, precision-recall, confusion matrix, training curves.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`) and rendered by the
Agg canvas explicitly, never through pyplot: no GUI backend is needed, nothing global is switched
(so `matplotlib.use` is unnecessary and a notebook importing this keeps its own backend), no global
figure list grows, and the functions are safe to call from the web server's threads.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr.metrics import check_labels_scores, check_thresholds, is_estimable, label_column

DPI = 150  # readable on screen and in the README without multi-megabyte files
SINGLE_PANEL_MAX = 4  # up to this many findings share one axes; more get a grid of panels


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")
    fig.clear()
    return path


def _check_curve_inputs(y_true, y_score, findings, thresholds):
    y_true, y_score = check_labels_scores(y_true, y_score, "multilabel")
    findings = [str(f) for f in findings]
    if len(findings) != y_true.shape[1]:
        raise ValueError(
            f"findings has {len(findings)} names but y_true has {y_true.shape[1]} columns"
        )
    thresholds = check_thresholds(thresholds, y_true.shape[1])
    return y_true, y_score, findings, thresholds


def _panel_axes(fig: Figure, k: int) -> list:
    """One shared axes when k <= SINGLE_PANEL_MAX, else a grid with one axes per finding."""
    if k <= SINGLE_PANEL_MAX:
        return [fig.add_subplot(1, 1, 1)] * k
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(k)]
    return axes


def _figure_size(k: int) -> tuple[float, float]:
    if k <= SINGLE_PANEL_MAX:
        return 6.0, 5.5
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    return 3.4 * ncols, 3.2 * nrows


def _plot_curves(y_true, y_score, findings, thresholds, path, kind: str) -> Path:
    y_true, y_score, findings, thresholds = _check_curve_inputs(
        y_true, y_score, findings, thresholds
    )
    k = len(findings)
    fig = _new_figure(*_figure_size(k))
    axes = _panel_axes(fig, k)
    grid = k > SINGLE_PANEL_MAX
    skipped: list[str] = []
    colors = matplotlib.colormaps["tab10"]
    for j, (name, ax) in enumerate(zip(findings, axes, strict=True)):
        labels, scores = label_column(y_true, y_score, j)
        color = "C0" if grid else colors(j % 10)
        if not is_estimable(labels):
            skipped.append(name)
            if grid:
                ax.text(0.5, 0.5, "not estimable", ha="center", va="center")
                ax.set_title(name, fontsize=9)
            continue
        pred = scores >= thresholds[j]
        pos = labels == 1
        if kind == "roc":
            fpr, tpr, _ = roc_curve(labels, scores)
            label = f"{name} (AUROC {roc_auc_score(labels, scores):.3f})"
            ax.plot(fpr, tpr, color=color, lw=1.5, label=label)
            op_x = np.sum(pred & ~pos) / np.sum(~pos)
            op_y = np.sum(pred & pos) / np.sum(pos)
        else:
            precision, recall, _ = precision_recall_curve(labels, scores)
            label = f"{name} (AUPRC {average_precision_score(labels, scores):.3f})"
            ax.step(recall, precision, where="post", color=color, lw=1.5, label=label)
            ax.axhline(pos.mean(), color=color, lw=0.8, ls=":")  # chance = prevalence
            op_x = np.sum(pred & pos) / np.sum(pos)
            op_y = np.sum(pred & pos) / np.sum(pred) if pred.any() else np.nan
        if np.isfinite(op_y):
            ax.plot(op_x, op_y, "o", color=color, mec="black", ms=6)
        if grid:
            ax.set_title(name, fontsize=9)
            ax.legend([label.split(" (", 1)[1].rstrip(")")], loc="lower right", fontsize=7)
    for ax in dict.fromkeys(axes):  # unique axes, in order
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.set_xlabel("1 - specificity (FPR)")
            ax.set_ylabel("sensitivity (TPR)")
        else:
            ax.set_xlabel("recall (sensitivity)")
            ax.set_ylabel("precision (PPV)")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
    if not grid and axes:
        axes[0].legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    title = "ROC curves" if kind == "roc" else "Precision-recall curves"
    title += " (dot: operating point at the threshold)"
    if skipped and not grid:
        title += "\nnot estimable: " + ", ".join(skipped)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_roc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    findings: list[str],
    thresholds: np.ndarray,
    path: str | Path,
) -> Path:
    """ROC curve per estimable finding, operating point at its threshold, AUROC in the legend."""
    return _plot_curves(y_true, y_score, findings, thresholds, path, "roc")


def plot_pr(
    y_true: np.ndarray,
    y_score: np.ndarray,
    findings: list[str],
    thresholds: np.ndarray,
    path: str | Path,
) -> Path:
    """Precision-recall curve per estimable finding, operating point marked, AUPRC in legend."""
    return _plot_curves(y_true, y_score, findings, thresholds, path, "pr")


def _draw_matrix(ax, matrix: np.ndarray, labels: list[str], title: str) -> None:
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
    ticks = range(len(labels))
    slanted = len(labels) > 3 or max(len(label) for label in labels) > 8
    ax.set_xticks(
        list(ticks),
        labels,
        rotation=45 if slanted else 0,
        ha="right" if slanted else "center",
        fontsize=8,
    )
    ax.set_yticks(list(ticks), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    half = matrix.max() / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(int(matrix[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > half else "black",
            )


def plot_confusion(metrics: dict, path: str | Path) -> Path:
    """Confusion matrix from `compute_metrics` output.

    Multiclass: the K x K matrix (rows true, columns predicted). Multilabel: one 2 x 2 panel per
    finding at its threshold.
    """
    if "per_finding" not in metrics:
        raise ValueError("metrics must come from compute_metrics (missing key 'per_finding')")
    names = list(metrics.get("findings") or metrics["per_finding"])
    accuracy = metrics.get("accuracy")
    acc_text = "" if accuracy is None else f" (accuracy {accuracy:.3f})"
    if "confusion_matrix" in metrics:
        matrix = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
        if matrix.shape != (len(names), len(names)):
            raise ValueError(
                f"metrics['confusion_matrix'] shape {matrix.shape} does not match "
                f"{len(names)} findings"
            )
        side = max(4.0, 0.6 * len(names) + 2.5)
        fig = _new_figure(side, side)
        _draw_matrix(fig.add_subplot(1, 1, 1), matrix, names, "Confusion matrix" + acc_text)
        return _save(fig, path)

    k = len(names)
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    fig = _new_figure(2.8 * ncols, 2.8 * nrows)
    for i, name in enumerate(names):
        c = metrics["per_finding"][name]["confusion"]
        matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        thr = metrics["per_finding"][name]["threshold"]
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _draw_matrix(ax, matrix, ["neg", "pos"], f"{name} @ {thr:.2f}")
    fig.suptitle("Confusion per finding at its threshold" + acc_text, fontsize=10)
    return _save(fig, path)


def _series(history: list[dict], key: str) -> np.ndarray | None:
    if not any(entry.get(key) is not None for entry in history):
        return None
    return np.array([np.nan if entry.get(key) is None else float(entry[key]) for entry in history])


def plot_training_curves(history: list[dict], path: str | Path) -> Path:
    """Two panels: train/val loss and validation mean AUROC, per epoch."""
    if not isinstance(history, list) or not history:
        raise ValueError("history must be a non-empty list of per-epoch dicts")
    if not all(isinstance(entry, dict) for entry in history):
        raise ValueError("history entries must be dicts like {'epoch': 1, 'train_loss': ...}")
    epochs = np.array([entry.get("epoch", i + 1) for i, entry in enumerate(history)], dtype=float)
    fig = _new_figure(10.0, 4.0)
    panels = [
        ("loss", ["train_loss", "val_loss"]),
        ("mean AUROC", ["train_mean_auroc", "val_mean_auroc"]),
    ]
    for p, (ylabel, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 2, p + 1)
        drawn = False
        for key in keys:
            values = _series(history, key)
            if values is not None:
                ax.plot(epochs, values, marker="o", ms=3, label=key)
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle("Training curves", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Report figures: curves with several operating points, reliability diagrams, subgroup AUROC
# ---------------------------------------------------------------------------------------------

_POINT_MARKERS = ("o", "^", "s", "D", "v", "P")


def _grid(k: int, ncols: int = 4) -> tuple[int, int]:
    ncols = max(1, min(ncols, k))
    return math.ceil(k / ncols), ncols


def plot_operating_points(
    y_true: np.ndarray,
    y_score: np.ndarray,
    findings: list[str],
    points: dict[str, np.ndarray],
    path: str | Path,
    kind: str = "roc",
) -> Path:
    """ROC (or PR, kind="pr") per finding, one panel each, with every operating point marked.

    points: {label: thresholds (K,)}, e.g. {"youden (val)": t1, "sens 0.95 (val)": t2}.
    """
    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be 'roc' or 'pr', got {kind!r}")
    y_true, y_score = check_labels_scores(y_true, y_score, "multilabel")
    findings = [str(f) for f in findings]
    if len(findings) != y_true.shape[1]:
        raise ValueError(f"findings has {len(findings)} names for {y_true.shape[1]} columns")
    points = {label: check_thresholds(t, len(findings)) for label, t in points.items()}
    nrows, ncols = _grid(len(findings))
    fig = _new_figure(3.3 * ncols, 3.1 * nrows + 0.4)
    handles = {}
    for j, name in enumerate(findings):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        ax.set_title(name, fontsize=9)
        labels, scores = label_column(y_true, y_score, j)
        if not is_estimable(labels):
            ax.text(0.5, 0.5, "not estimable", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        pos = labels == 1
        if kind == "roc":
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, color="C0", lw=1.4)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.text(
                0.97,
                0.05,
                f"AUROC {roc_auc_score(labels, scores):.3f}",
                ha="right",
                fontsize=8,
                transform=ax.transAxes,
            )
            ax.set_xlabel("1 - specificity", fontsize=8)
            ax.set_ylabel("sensitivity", fontsize=8)
        else:
            precision, recall, _ = precision_recall_curve(labels, scores)
            ax.step(recall, precision, where="post", color="C0", lw=1.4)
            ax.axhline(pos.mean(), color="grey", lw=0.8, ls=":")
            ax.text(
                0.03,
                0.05,
                f"AUPRC {average_precision_score(labels, scores):.3f}",
                fontsize=8,
                transform=ax.transAxes,
            )
            ax.set_xlabel("recall (sensitivity)", fontsize=8)
            ax.set_ylabel("precision (PPV)", fontsize=8)
        for m, (label, thresholds) in enumerate(points.items()):
            pred = scores >= thresholds[j]
            sens = np.sum(pred & pos) / np.sum(pos)
            if kind == "roc":
                x, y = np.sum(pred & ~pos) / np.sum(~pos), sens
            else:
                x, y = sens, (np.sum(pred & pos) / np.sum(pred) if pred.any() else np.nan)
            if np.isfinite(y):
                (handle,) = ax.plot(
                    x,
                    y,
                    _POINT_MARKERS[m % len(_POINT_MARKERS)],
                    color=f"C{m + 1}",
                    mec="black",
                    ms=6,
                )
                handles.setdefault(label, handle)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=len(handles),
            fontsize=8,
        )
    title = "ROC curves" if kind == "roc" else "Precision-recall curves (dotted: prevalence)"
    fig.suptitle(title + ", operating points chosen on validation", fontsize=10)
    return _save(fig, path)


def plot_reliability(panels: dict[str, dict], path: str | Path) -> Path:
    """Reliability diagrams side by side, e.g. {"before (T = 1)": bins, "after": bins}.

    bins: `cxr.calibration.reliability_bins` output, optionally with an "ece" entry. Top: observed
    frequency against mean predicted probability per bin (the diagonal is perfect calibration);
    bottom: how many cases fall in each bin.
    """
    if not panels:
        raise ValueError("panels must hold at least one reliability diagram")
    fig = _new_figure(4.2 * len(panels), 5.2)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 1])
    for p, (title, bins) in enumerate(panels.items()):
        for key in ("edges", "confidence", "frequency", "count"):
            if key not in bins:
                raise ValueError(f"panel {title!r} lacks {key!r} (use reliability_bins)")
        edges = np.asarray(bins["edges"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        width = np.diff(edges)
        filled = [i for i, c in enumerate(bins["count"]) if c]
        freq = np.array([bins["frequency"][i] for i in filled], dtype=float)
        conf = np.array([bins["confidence"][i] for i in filled], dtype=float)
        ax = fig.add_subplot(grid[0, p])
        ax.bar(
            centres[filled],
            freq,
            width=width[filled],
            color="C0",
            alpha=0.35,
            edgecolor="C0",
            label="observed frequency",
        )
        ax.plot(conf, freq, "o-", color="C3", ms=4, lw=1, label="(mean predicted, observed)")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
        ece = bins.get("ece")
        ax.set_title(title + ("" if ece is None else f"\nECE {ece:.3f}"), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("observed frequency", fontsize=8)
        ax.grid(alpha=0.3)
        if p == 0:
            ax.legend(fontsize=7, loc="upper left")
        hist = fig.add_subplot(grid[1, p], sharex=ax)
        hist.bar(centres, bins["count"], width=width, color="grey")
        hist.set_xlabel("predicted probability", fontsize=8)
        hist.set_ylabel("cases", fontsize=8)
    fig.suptitle("Reliability diagrams", fontsize=10)
    return _save(fig, path)


def plot_subgroup_auroc(
    rows: list[dict], overall: dict[str, float | None], path: str | Path
) -> Path:
    """AUROC with its interval per subgroup, one panel per finding (a forest plot).

    rows: {"finding", "subgroup" (label such as "sex=F"), "estimate", "low", "high", "n"};
    estimate None = not estimable (drawn as a note). overall: AUROC per finding (vertical line).
    """
    findings = list(dict.fromkeys(r["finding"] for r in rows))
    if not findings:
        raise ValueError("rows must hold at least one subgroup result")
    nrows, ncols = _grid(len(findings))
    groups = list(dict.fromkeys(r["subgroup"] for r in rows))
    fig = _new_figure(3.4 * ncols, (0.28 * len(groups) + 1.3) * nrows)
    for f, name in enumerate(findings):
        ax = fig.add_subplot(nrows, ncols, f + 1)
        mine = {r["subgroup"]: r for r in rows if r["finding"] == name}
        for y, group in enumerate(groups):
            r = mine.get(group)
            if r is None or r["estimate"] is None:
                ax.text(0.52, y, "not estimable", fontsize=6, va="center", color="grey")
                continue
            low = r["low"] if r["low"] is not None else r["estimate"]
            high = r["high"] if r["high"] is not None else r["estimate"]
            ax.errorbar(
                r["estimate"],
                y,
                xerr=[[r["estimate"] - low], [high - r["estimate"]]],
                fmt="o",
                color="C0",
                ms=4,
                capsize=2,
                lw=1,
            )
        if overall.get(name) is not None:
            ax.axvline(overall[name], color="C3", lw=0.8, ls="--")
        ax.axvline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_yticks(range(len(groups)), groups if f % ncols == 0 else [], fontsize=7)
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_xlim(0.0, 1.0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(
        "AUROC by subgroup, 95% patient-bootstrap intervals (dashed: all images)", fontsize=10
    )
    return _save(fig, path)
