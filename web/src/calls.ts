// How a finding's score is worded: the three-way call with its borderline band, the margin to
// the threshold at a precision that never hides which side it is on, and human names.
import type { Call, Finding } from "./api";

/** 71.8%; never rounds to a misleading 100% or 0%. */
export function percent(p: number): string {
  if (p >= 1) return "100%";
  if (p <= 0) return "0%";
  if (p >= 0.9995) return ">99.9%";
  if (p < 0.0005) return "<0.1%";
  return `${(100 * p).toFixed(1)}%`;
}

/** p as a percentage with at least `digits` decimals, more when rounding would print 0% or
 * 100% for a value strictly between them; ">99.99%" / "<0.01%" past four decimals. */
function pct(p: number, digits: number): string {
  if (p >= 1) return "100%";
  if (p <= 0) return "0%";
  for (let d = digits; d <= 4; d++) {
    const text = (100 * p).toFixed(d);
    if (Number(text) > 0 && Number(text) < 100) return `${text}%`;
  }
  return p > 0.5 ? ">99.9999%" : "<0.0001%";
}

/** Probability and threshold, with as many decimals as it takes for them to print differently
 * (so "55.8% vs 55.8%" can never sit beside a call), and never a false 0% or 100%. */
export function percentPair(p: number, threshold: number): [string, string] {
  for (let digits = 1; digits <= 4; digits++) {
    const a = pct(p, digits);
    const b = pct(threshold, digits);
    if (a !== b || p === threshold) return [a, b];
  }
  return [pct(p, 4), pct(threshold, 4)];
}

/** "+2.3 pts over", "−0.04 pts under", "at the threshold": the margin in percentage points. */
export function marginText(p: number, threshold: number): string {
  const diff = 100 * (p - threshold);
  if (diff === 0) return "at the threshold";
  let digits = 1;
  while (digits < 4 && Number(Math.abs(diff).toFixed(digits)) === 0) digits++;
  const size = Math.abs(diff).toFixed(digits);
  return diff > 0 ? `+${size} pts over` : `−${size} pts under`;
}

/** The call: the server's three-way one, or the plain threshold for older servers. */
export function callOf(f: Finding): Call {
  return f.call ?? (f.positive ? "positive" : "negative");
}

export function isReliable(f: Finding): boolean {
  return f.reliable ?? true;
}

export const CALL_WORD: Record<Call, string> = {
  positive: "Positive",
  possible: "Possible",
  negative: "Negative",
};

/** "Pleural_Thickening" -> "Pleural thickening"; class names in capitals -> "Pneumonia". */
export function humanName(name: string): string {
  const words = name.replace(/[_-]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").trim();
  const lower = words.toLowerCase();
  return lower.charAt(0).toUpperCase() + lower.slice(1);
}

/** What a screen reader says for one finding: "Emphysema 85.2%, threshold 38.7%, positive". */
export function findingLabel(f: Finding): string {
  const [p, t] = percentPair(f.probability, f.threshold);
  const call = callOf(f);
  let label = `${humanName(f.finding)} ${p}, threshold ${t}, ${call}`;
  if (call === "possible") label += " (borderline)";
  if (!isReliable(f)) label += ", unreliable finding";
  return label;
}

export interface Counts {
  positive: number;
  possible: number;
  unreliable: number;
}

/** Positive and possible calls; unreliable findings are left out unless asked for. */
export function countCalls(findings: Finding[], includeUnreliable = false): Counts {
  const counted = findings.filter((f) => includeUnreliable || isReliable(f));
  return {
    positive: counted.filter((f) => callOf(f) === "positive").length,
    possible: counted.filter((f) => callOf(f) === "possible").length,
    unreliable: findings.filter((f) => !isReliable(f)).length,
  };
}

export function countsText(c: Counts, includeUnreliable = false): string {
  const parts = [`${c.positive} positive`, `${c.possible} possible`];
  if (c.unreliable && !includeUnreliable) {
    parts.push(`${c.unreliable} unreliable finding${c.unreliable === 1 ? "" : "s"} not counted`);
  }
  return parts.join(", ");
}

/** "nih_000…4_000.png": keeps the start and the end (extension, image number) of a long name. */
export function middleTruncate(name: string, max = 28): string {
  if (name.length <= max) return name;
  const keepEnd = Math.ceil((max - 1) * 0.45);
  const keepStart = max - 1 - keepEnd;
  return `${name.slice(0, keepStart)}…${name.slice(name.length - keepEnd)}`;
}
