import type { Item } from "../App";
import { percent } from "./FindingsList";

interface Props {
  items: Item[];
  selected: number | null;
  onSelect: (id: number) => void;
  onDownload: () => void;
}

/** Every file of this session: status, top finding, positive calls; downloadable as CSV. */
export function ResultsTable({ items, selected, onSelect, onDownload }: Props) {
  const done = items.filter((i) => i.result || i.error).length;
  return (
    <section className="panel results" aria-label="Results">
      <div className="results-head">
        <h2>
          Results ({done}/{items.length})
        </h2>
        <button type="button" onClick={onDownload} disabled={done === 0}>
          Download CSV
        </button>
      </div>
      <div className="table-scroll">
        <table>
          <thead>
            <tr>
              <th>file</th>
              <th>top finding</th>
              <th>positive calls</th>
              <th>time</th>
            </tr>
          </thead>
          <tbody>
            {items.map((item) => {
              const r = item.result;
              const positives = r?.findings.filter((f) => f.positive).map((f) => f.finding);
              return (
                <tr
                  key={item.id}
                  className={item.id === selected ? "selected" : undefined}
                  onClick={() => onSelect(item.id)}
                  tabIndex={0}
                  onKeyDown={(e) => e.key === "Enter" && onSelect(item.id)}
                >
                  <td className="file" title={item.file.name}>
                    {item.file.name}
                  </td>
                  {r ? (
                    <>
                      <td>
                        {r.top_finding} {percent(r.findings[0].probability)}
                      </td>
                      <td>{positives && positives.length ? positives.join(", ") : "none"}</td>
                      <td>{Math.round(r.seconds * 1000)} ms</td>
                    </>
                  ) : (
                    <td colSpan={3} className={item.error ? "error" : "muted"}>
                      {item.error ?? (item.running ? "analysing…" : "waiting")}
                    </td>
                  )}
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </section>
  );
}
