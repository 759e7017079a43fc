// The results list as CSV, built in the browser (nothing is sent anywhere).
import type { Prediction } from "./api";
import { callOf } from "./calls";

export interface ResultRow {
  file: string;
  result?: Prediction;
  error?: string;
}

/** Which model answered, and when: every row carries it, so a pasted-together sheet stays honest. */
export interface CsvMeta {
  model: string;
  version: string;
  thresholdMethod: string;
  exported: string; // ISO timestamp
}

/** One CSV cell: quoted when needed; a leading = + - @ is defused so spreadsheets do not run it. */
export function csvCell(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined) return "";
  let text = String(value);
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function findingsOf(rows: ResultRow[]): string[] {
  const names: string[] = [];
  for (const row of rows) {
    for (const f of row.result?.findings ?? []) {
      if (!names.includes(f.finding)) names.push(f.finding);
    }
  }
  return names.sort();
}

const PER_FINDING = ["probability", "threshold", "band_low", "band_high", "call", "reliable", "positive"];

export function toCsv(rows: ResultRow[], notice: string, meta?: CsvMeta): string {
  const findings = findingsOf(rows);
  const header = [
    "file",
    "status",
    "top_finding",
    ...findings.flatMap((f) => PER_FINDING.map((k) => `${f}_${k}`)),
    "seconds",
    "error",
    "model",
    "model_version",
    "threshold_method",
    "exported_at",
    "notice",
  ];
  const lines = [header.map(csvCell).join(",")];
  for (const row of rows) {
    const byName = new Map((row.result?.findings ?? []).map((f) => [f.finding, f]));
    const cells: (string | number | null | undefined)[] = [
      row.file,
      row.result ? "ok" : row.error ? "error" : "pending",
      row.result?.top_finding,
    ];
    for (const name of findings) {
      const f = byName.get(name);
      if (!f) {
        cells.push(...PER_FINDING.map(() => ""));
        continue;
      }
      const [low, high] = f.band ?? [f.threshold, f.threshold];
      cells.push(
        f.probability.toFixed(6),
        f.threshold.toFixed(6),
        low.toFixed(6),
        high.toFixed(6),
        callOf(f),
        f.reliable === undefined ? "" : f.reliable ? 1 : 0,
        f.positive ? 1 : 0,
      );
    }
    cells.push(
      row.result?.seconds.toFixed(4),
      row.error,
      meta?.model,
      meta?.version,
      meta?.thresholdMethod,
      meta?.exported,
      notice,
    );
    lines.push(cells.map(csvCell).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}
