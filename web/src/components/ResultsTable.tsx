import { useRef } from "react";
import type { Item } from "../App";
import { countCalls, humanName, middleTruncate, percent } from "../calls";

interface Props {
  items: Item[];
  selected: number | null;
  includeUnreliable: boolean;
  onSelect: (id: number) => void;
  onRemove: (id: number) => void;
  onRetry: (id: number) => void;
  onCancel: (id: number) => void;
  onForgetAll: () => void;
  onDownload: () => void;
}

function status(item: Item, includeUnreliable: boolean): string {
  const r = item.result;
  if (r) {
    const c = countCalls(r.findings, includeUnreliable);
    const top = r.findings[0];
    return `${humanName(r.top_finding)} ${percent(top.probability)} · ${c.positive} positive, ${c.possible} possible`;
  }
  if (item.error) return item.error;
  return item.running ? "analysing…" : "waiting";
}

/** Every file analysed in this browser: thumbnail, name, top finding and calls; Up/Down move
 * between rows; each row can be removed or retried; kept across reloads (see history.ts). */
export function ResultsTable(p: Props) {
  const { items } = p;
  const done = items.filter((i) => i.result || i.error).length;
  const list = useRef<HTMLUListElement>(null);
  const focusIndex = Math.max(0, items.findIndex((i) => i.id === p.selected));
  const move = (e: React.KeyboardEvent, index: number) => {
    const to =
      e.key === "ArrowDown" ? Math.min(items.length - 1, index + 1)
      : e.key === "ArrowUp" ? Math.max(0, index - 1)
      : null;
    if (to === null) return;
    e.preventDefault();
    e.stopPropagation();
    list.current?.querySelectorAll<HTMLButtonElement>("button.row-main")[to]?.focus();
    p.onSelect(items[to].id);
  };
  return (
    <section className="panel results" aria-labelledby="results-title">
      <div className="results-head">
        <h2 id="results-title">
          Results ({done}/{items.length})
        </h2>
        <button type="button" onClick={p.onDownload} disabled={done === 0}>
          Download CSV
        </button>
        <button type="button" onClick={p.onForgetAll}>
          Forget all
        </button>
      </div>
      <p className="hint">Kept in this browser only, on this device; “Forget all” deletes them.</p>
      <ul className="result-rows" ref={list} aria-label="Analysed files">
        {items.map((item, index) => (
          <li key={item.id} className={item.id === p.selected ? "selected" : undefined}>
            <button
              type="button"
              className="row-main"
              aria-current={item.id === p.selected ? "true" : undefined}
              tabIndex={index === focusIndex ? 0 : -1}
              onClick={() => p.onSelect(item.id)}
              onKeyDown={(e) => move(e, index)}
              title={item.name}
            >
              <span className="thumb" aria-hidden="true">
                {item.result?.image.original ? <img src={item.result.image.original} alt="" /> : null}
                {item.running ? <span className="spinner" /> : null}
              </span>
              <span className="row-text">
                <span className="file" data-testid="row-name" aria-hidden="true">
                  {middleTruncate(item.name, 22)}
                </span>
                <span className="sr-only">{item.name}: </span>
                <span className={`row-status${item.error ? " error-text" : ""}`}>
                  {status(item, p.includeUnreliable)}
                </span>
              </span>
            </button>
            <span className="row-actions">
              {item.running ? (
                <button type="button" onClick={() => p.onCancel(item.id)} aria-label={`Cancel ${item.name}`}>
                  Cancel
                </button>
              ) : null}
              {item.error ? (
                <button type="button" onClick={() => p.onRetry(item.id)} aria-label={`Retry ${item.name}`}>
                  Retry
                </button>
              ) : null}
              <button type="button" onClick={() => p.onRemove(item.id)} aria-label={`Remove ${item.name}`}>
                ✕
              </button>
            </span>
          </li>
        ))}
      </ul>
    </section>
  );
}
