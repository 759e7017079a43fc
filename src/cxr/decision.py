"""The one decision rule of a run: which findings an image is called, from its probabilities.

Every consumer (training's validation metrics, `cxr evaluate`, `cxr predict`, `cxr serve`,
folder prediction, the report, the ONNX contract) calls findings through `DecisionRule.calls`,
and model.json, calibration.json and model.onnx.json carry the rule as one field, "decision":

- "per_finding" (sigmoid, multi-label): finding j is called when p_j >= threshold_j.
- "binary" (softmax, two classes): ONE threshold t on the positive class's probability; the
  image is that class when p_pos >= t and the other class otherwise. Two independent thresholds
  on p and 1 - p could call an image neither class (or both) and disagree with its top finding.
- "argmax" (softmax, more than two classes): the most probable class. Per-class one-vs-rest
  thresholds are still chosen and reported, for reference only: they never make a call.

The positive class of a two-class run is the one not named like "normal" ("NORMAL", "No
Finding", "healthy", "negative"); with neither or both so named, the second column (the same
convention as a two-class `roc_curve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr.errors import DecisionError

RULES = ("per_finding", "binary", "argmax")
NORMAL_NAMES = frozenset({"normal", "no finding", "no_finding", "nofinding", "healthy", "negative"})


def positive_index(findings: list[str]) -> int:
    """The column a two-class run thresholds: the class not named like "normal", else 1."""
    normal = [str(f).strip().lower() in NORMAL_NAMES for f in findings]
    if len(findings) == 2 and normal.count(True) == 1:
        return normal.index(False)
    return 1


def rule_kind(task: str, n_classes: int) -> str:
    if task == "multilabel":
        return "per_finding"
    if task != "multiclass":
        raise DecisionError(f"task must be 'multilabel' or 'multiclass', got {task!r}")
    return "binary" if n_classes == 2 else "argmax"


@dataclass(frozen=True)
class DecisionRule:
    """How probabilities (N, K) become calls (N, K); see the module docstring."""

    kind: str
    findings: tuple[str, ...]
    thresholds: np.ndarray  # (K,): per_finding and binary use them; argmax reports them only
    positive: int | None = None  # binary: the thresholded column

    @property
    def threshold(self) -> float:
        """The binary rule's one threshold, on the positive class's probability."""
        if self.kind != "binary":
            raise DecisionError(f"a {self.kind} rule has no single threshold")
        return float(self.thresholds[self.positive])

    def calls(self, probs) -> np.ndarray:
        """(N, K) bool: True where the finding is called. Single-label rules call exactly one
        class per image."""
        probs = np.asarray(probs, dtype=np.float64)
        squeeze = probs.ndim == 1
        probs = np.atleast_2d(probs)
        if probs.shape[1] != len(self.findings):
            raise ValueError(
                f"probabilities have {probs.shape[1]} columns, the rule "
                f"{len(self.findings)} findings"
            )
        if self.kind == "per_finding":
            out = probs >= self.thresholds
        elif self.kind == "binary":
            pos = probs[:, self.positive] >= self.threshold
            out = np.zeros(probs.shape, dtype=bool)
            out[:, self.positive] = pos
            out[:, 1 - self.positive] = ~pos
        else:
            out = np.zeros(probs.shape, dtype=bool)
            out[np.arange(len(probs)), probs.argmax(axis=1)] = True
        return out[0] if squeeze else out

    def top(self, probs) -> np.ndarray:
        """(N,) index of the finding to name first: the called class of a single-label rule
        (so it never contradicts the calls), the most probable finding of a multi-label one."""
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        if self.kind == "per_finding":
            return probs.argmax(axis=1)
        return self.calls(probs).argmax(axis=1)

    def describe(self) -> str:
        if self.kind == "per_finding":
            return "each finding is called when its probability >= its own threshold"
        if self.kind == "binary":
            pos, other = self.findings[self.positive], self.findings[1 - self.positive]
            return f"{pos} when P({pos}) >= {self.threshold:.4g}, otherwise {other}"
        return "the class with the highest probability (per-class thresholds: reference only)"

    def to_json(self) -> dict:
        out: dict = {"rule": self.kind, "text": self.describe()}
        if self.kind == "binary":
            out |= {"positive_class": self.findings[self.positive], "threshold": self.threshold}
        out["thresholds"] = {
            f: float(t) for f, t in zip(self.findings, self.thresholds, strict=True)
        }
        return out


def decision_rule(task: str, findings: list[str], thresholds) -> DecisionRule:
    """The rule of a run with this task, findings and chosen thresholds. For two classes the
    positive class's threshold t is the rule, and the other class is shown at 1 - t."""
    findings = tuple(str(f) for f in findings)
    thresholds = np.array(thresholds, dtype=np.float64)
    if thresholds.shape != (len(findings),):
        raise DecisionError(f"{len(findings)} findings but thresholds of shape {thresholds.shape}")
    kind = rule_kind(task, len(findings))
    if kind != "binary":
        return DecisionRule(kind, findings, thresholds)
    p = positive_index(list(findings))
    thresholds[1 - p] = 1.0 - thresholds[p]
    return DecisionRule(kind, findings, thresholds, p)


def rule_from_json(raw: dict | None, task: str, findings: list[str], thresholds) -> DecisionRule:
    """The rule a run file's "decision" field states; for files written before the field
    existed (raw None), the rule derived from task and thresholds (a two-class run's positive
    class threshold, the other class's ignored)."""
    findings = [str(f) for f in findings]
    if raw is None:
        return decision_rule(task, findings, thresholds)
    if not isinstance(raw, dict) or raw.get("rule") not in RULES:
        raise DecisionError(
            f"decision.rule must be one of {', '.join(RULES)}, got "
            f"{raw.get('rule') if isinstance(raw, dict) else raw!r}"
        )
    expected = rule_kind(task, len(findings))
    if raw["rule"] != expected:
        raise DecisionError(
            f"decision.rule is {raw['rule']!r} but a {task} run with "
            f"{len(findings)} findings uses {expected!r}"
        )
    saved = raw.get("thresholds") or {}
    try:
        values = [
            float(saved[f]) if f in saved else float(t)
            for f, t in zip(findings, np.asarray(thresholds, dtype=np.float64), strict=True)
        ]
    except (TypeError, ValueError) as exc:
        raise DecisionError(f"decision.thresholds: {exc}") from None
    if expected == "binary":
        positive = raw.get("positive_class")
        if positive not in findings:
            raise DecisionError(f"decision.positive_class {positive!r} is not one of {findings}")
        try:
            t = float(raw["threshold"])
        except (KeyError, TypeError, ValueError):
            raise DecisionError("decision.threshold must be a number") from None
        if not 0.0 <= t <= 1.0:
            raise DecisionError(f"decision.threshold must be in [0, 1], got {t}")
        p = findings.index(positive)
        values[p], values[1 - p] = t, 1.0 - t
        return DecisionRule("binary", tuple(findings), np.array(values), p)
    return DecisionRule(expected, tuple(findings), np.array(values))
