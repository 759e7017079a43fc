import { useRef } from "react";
import type { Finding } from "../api";
import {
  CALL_WORD,
  callOf,
  findingLabel,
  humanName,
  isReliable,
  marginText,
  percentPair,
} from "../calls";

export { percent } from "../calls";

interface Props {
  findings: Finding[];
  selected: string | null;
  onSelect: (finding: string) => void;
}

const clamp01 = (v: number) => Math.min(Math.max(v, 0), 1);

/** Probability bars, highest first: the threshold tick, the borderline band shaded, the margin
 * to the threshold, and a three-way call; findings the model cannot call reliably are greyed.
 * Up/Down (and Home/End) move between findings; one of them is in the tab order. */
export function FindingsList({ findings, selected, onSelect }: Props) {
  const sorted = [...findings].sort((a, b) => b.probability - a.probability);
  const list = useRef<HTMLUListElement>(null);
  const focusIndex = Math.max(0, sorted.findIndex((f) => f.finding === selected));

  const move = (e: React.KeyboardEvent, index: number) => {
    const last = sorted.length - 1;
    const to =
      e.key === "ArrowDown" ? Math.min(last, index + 1)
      : e.key === "ArrowUp" ? Math.max(0, index - 1)
      : e.key === "Home" ? 0
      : e.key === "End" ? last
      : null;
    if (to === null) return;
    e.preventDefault();
    e.stopPropagation();
    list.current?.querySelectorAll<HTMLButtonElement>("button.finding")[to]?.focus();
    onSelect(sorted[to].finding);
  };

  return (
    <ul className="findings" aria-label="Findings, highest probability first" ref={list}>
      {sorted.map((f, index) => {
        const call = callOf(f);
        const reliable = isReliable(f);
        const [p, t] = percentPair(f.probability, f.threshold);
        const [low, high] = f.band ?? [f.threshold, f.threshold];
        return (
          <li key={f.finding} className={reliable ? undefined : "unreliable"}>
            <button
              type="button"
              className={`finding${selected === f.finding ? " selected" : ""}`}
              aria-pressed={selected === f.finding}
              tabIndex={index === focusIndex ? 0 : -1}
              onClick={() => onSelect(f.finding)}
              onKeyDown={(e) => move(e, index)}
              title={`${findingLabel(f)}. Click for its Grad-CAM heatmap.`}
            >
              <span className="finding-name">{humanName(f.finding)}</span>
              <span className="bar" aria-hidden="true">
                {high > low && (
                  <span
                    className="band"
                    style={{ left: `${100 * clamp01(low)}%`, width: `${100 * (clamp01(high) - clamp01(low))}%` }}
                  />
                )}
                <span className={`fill ${call}`} style={{ width: `${100 * clamp01(f.probability)}%` }} />
                <span className="threshold" style={{ left: `${100 * clamp01(f.threshold)}%` }} />
              </span>
              <span className="finding-pct">
                {p}
                <span className="sr-only">, threshold</span>
                <small>
                  <span aria-hidden="true">thr </span>
                  {t}
                  <span aria-hidden="true"> · {marginText(f.probability, f.threshold)}</span>
                  <span className="sr-only">,</span>
                </small>
              </span>
              <span className={`call ${call}`}>
                {CALL_WORD[call]}
                {call === "possible" && <span className="sr-only"> (borderline)</span>}
                {!reliable && <span className="sr-only">,</span>}
              </span>
              {!reliable && (
                <span className="unreliable-tag">
                  unreliable: AUROC {f.auroc === null || f.auroc === undefined ? "n/a" : f.auroc.toFixed(2)}
                </span>
              )}
            </button>
          </li>
        );
      })}
    </ul>
  );
}
