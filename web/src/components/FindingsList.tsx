import type { Finding } from "../api";

/** 71.8%; never rounds to a misleading 100% or 0%. */
export function percent(p: number): string {
  if (p >= 1) return "100%";
  if (p <= 0) return "0%";
  if (p >= 0.9995) return ">99.9%";
  if (p < 0.0005) return "<0.1%";
  return `${(100 * p).toFixed(1)}%`;
}

interface Props {
  findings: Finding[];
  selected: string | null;
  onSelect: (finding: string) => void;
}

/** Probability bars, highest first, with the decision threshold marked and the call shown. */
export function FindingsList({ findings, selected, onSelect }: Props) {
  const sorted = [...findings].sort((a, b) => b.probability - a.probability);
  return (
    <ul className="findings" aria-label="Findings, highest probability first">
      {sorted.map((f) => (
        <li key={f.finding}>
          <button
            type="button"
            className={`finding${selected === f.finding ? " selected" : ""}`}
            aria-pressed={selected === f.finding}
            onClick={() => onSelect(f.finding)}
            title={`${f.finding}: probability ${percent(f.probability)}, threshold ${percent(
              f.threshold,
            )}: ${f.positive ? "positive" : "negative"}. Click for its Grad-CAM heatmap.`}
          >
            <span className="finding-name">{f.finding}</span>
            <span
              className="bar"
              role="meter"
              aria-label={`${f.finding} probability`}
              aria-valuemin={0}
              aria-valuemax={1}
              aria-valuenow={f.probability}
            >
              <span
                className={`fill ${f.positive ? "pos" : "neg"}`}
                style={{ width: `${100 * f.probability}%` }}
              />
              <span
                className="threshold"
                style={{ left: `${100 * Math.min(Math.max(f.threshold, 0), 1)}%` }}
                title={`threshold ${percent(f.threshold)}`}
              />
            </span>
            <span className="finding-pct">
              {percent(f.probability)}
              <small>thr {percent(f.threshold)}</small>
            </span>
            <span className={`call ${f.positive ? "pos" : "neg"}`}>
              {f.positive ? "Positive" : "Negative"}
            </span>
          </button>
        </li>
      ))}
    </ul>
  );
}
