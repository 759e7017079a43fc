// The results table as CSV, built in the browser (nothing is sent anywhere).
import type { Prediction } from "./api";

export interface ResultRow {
  file: string;
  result?: Prediction;
  error?: string;
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

export function toCsv(rows: ResultRow[], notice: string): string {
  const findings = findingsOf(rows);
  const header = [
    "file",
    "status",
    "top_finding",
    ...findings.flatMap((f) => [`${f}_probability`, `${f}_threshold`, `${f}_positive`]),
    "seconds",
    "error",
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
      cells.push(f?.probability.toFixed(6), f?.threshold.toFixed(6), f ? (f.positive ? 1 : 0) : "");
    }
    cells.push(row.result?.seconds.toFixed(4), row.error, notice);
    lines.push(cells.map(csvCell).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}
