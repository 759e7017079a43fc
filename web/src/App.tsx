import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, fetchModel, predict, type ModelInfo as Info, type Prediction } from "./api";
import { DropZone } from "./components/DropZone";
import { FindingsList } from "./components/FindingsList";
import { ModelInfo } from "./components/ModelInfo";
import { ResultsTable } from "./components/ResultsTable";
import { Viewer } from "./components/Viewer";
import { toCsv } from "./csv";

export const NOTICE =
  "Research software: not a medical device. Predictions must not be used for diagnosis or treatment decisions.";

export interface Item {
  id: number;
  file: File;
  running?: boolean;
  result?: Prediction;
  error?: string;
}

function message(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  return err instanceof Error ? err.message : String(err);
}

export function App() {
  const [info, setInfo] = useState<Info | null>(null);
  const [infoError, setInfoError] = useState<string | null>(null);
  const [items, setItems] = useState<Item[]>([]);
  const [selected, setSelected] = useState<number | null>(null);
  const [finding, setFinding] = useState<string | null>(null);
  const [opacity, setOpacity] = useState(0.5);
  const [loadingHeatmap, setLoadingHeatmap] = useState<string | null>(null);
  const [heatmapError, setHeatmapError] = useState<string | null>(null);
  const nextId = useRef(1);
  const running = useRef(false);

  useEffect(() => {
    fetchModel()
      .then(setInfo)
      .catch((err) => setInfoError(`Model information unavailable: ${message(err)}`));
  }, []);

  const update = (id: number, patch: Partial<Item>) =>
    setItems((list) => list.map((i) => (i.id === id ? { ...i, ...patch } : i)));

  // One upload at a time, in the order the files were given: the server has few cores.
  useEffect(() => {
    if (running.current) return;
    const next = items.find((i) => !i.result && !i.error && !i.running);
    if (!next) return;
    running.current = true;
    update(next.id, { running: true });
    predict(next.file, { heatmaps: "auto" })
      .then((result) => {
        update(next.id, { running: false, result });
        setSelected((current) => current ?? next.id);
      })
      .catch((err) => update(next.id, { running: false, error: message(err) }))
      .finally(() => {
        running.current = false;
        setItems((list) => [...list]); // wake the queue for the next file
      });
  }, [items]);

  const addFiles = useCallback((files: File[]) => {
    const added = files.map((file) => ({ id: nextId.current++, file }));
    setItems((list) => [...list, ...added]);
    setSelected(added[0].id);
    setFinding(null);
  }, []);

  const current = items.find((i) => i.id === selected) ?? null;
  const result = current?.result ?? null;
  const shownFinding = finding && result?.findings.some((f) => f.finding === finding)
    ? finding
    : (result?.top_finding ?? null);

  const selectFinding = async (name: string) => {
    setFinding(name);
    setHeatmapError(null);
    if (!current?.result || current.result.heatmaps[name]) return;
    // Heatmaps come with the first answer for the top and positive findings; others on demand.
    setLoadingHeatmap(name);
    try {
      const extra = await predict(current.file, { heatmaps: name, images: false });
      setItems((list) =>
        list.map((i) =>
          i.id === current.id && i.result
            ? { ...i, result: { ...i.result, heatmaps: { ...i.result.heatmaps, ...extra.heatmaps } } }
            : i,
        ),
      );
    } catch (err) {
      setHeatmapError(message(err));
    } finally {
      setLoadingHeatmap(null);
    }
  };

  const download = () => {
    const csv = toCsv(
      items.map((i) => ({ file: i.file.name, result: i.result, error: i.error })),
      NOTICE,
    );
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "cxr-predictions.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  return (
    <div className="app">
      <header>
        <h1>cxr · chest X-ray classifier</h1>
        <p className="notice" role="note">
          <strong>Not a medical device.</strong> {info?.notice ?? NOTICE}
        </p>
      </header>
      <main>
        <div className="side">
          <DropZone onFiles={addFiles} busy={items.length > 0} />
          {items.length > 0 && (
            <ResultsTable
              items={items}
              selected={selected}
              onSelect={(id) => {
                setSelected(id);
                setFinding(null);
              }}
              onDownload={download}
            />
          )}
          <ModelInfo info={info} error={infoError} />
        </div>
        <div className="detail">
          {!current && (
            <section className="panel empty">
              <h2>No image yet</h2>
              <p>
                Choose or drop a chest radiograph. It is analysed in memory on this server and not
                stored.
              </p>
            </section>
          )}
          {current && current.error && (
            <section className="panel">
              <h2>{current.file.name}</h2>
              <p className="error" role="alert">
                {current.error}
              </p>
            </section>
          )}
          {current && !current.result && !current.error && (
            <section className="panel" aria-busy="true">
              <h2>{current.file.name}</h2>
              <p className="muted">Analysing…</p>
            </section>
          )}
          {result && (
            <section className="panel result" aria-label={`Result for ${result.file}`}>
              <h2>{result.file}</h2>
              <Viewer
                result={result}
                finding={shownFinding}
                opacity={opacity}
                onOpacity={setOpacity}
                heatmapState={
                  loadingHeatmap === shownFinding
                    ? "loading"
                    : shownFinding && result.heatmaps[shownFinding]
                      ? "ready"
                      : "missing"
                }
              />
              <h3>Findings</h3>
              <p className="hint">
                Bars show the probability; the black tick is the decision threshold chosen on
                validation. Click a finding to see where the model looked (Grad-CAM).
              </p>
              <FindingsList
                findings={result.findings}
                selected={shownFinding}
                onSelect={selectFinding}
              />
              {heatmapError && (
                <p className="error" role="alert">
                  {heatmapError}
                </p>
              )}
              <p className="meta">
                {Math.round(result.seconds * 1000)} ms on the server ·{" "}
                {result.ood.checked
                  ? `out-of-distribution check passed (score ${result.ood.score?.toFixed(2) ?? "?"})`
                  : `out-of-distribution check not run: ${result.ood.reason ?? "no gate"}`}
              </p>
              {result.warnings?.map((w) => (
                <p className="warning" key={w}>
                  {w}
                </p>
              ))}
            </section>
          )}
        </div>
      </main>
      <footer>
        <p>
          {NOTICE} Uploads are processed in memory. API description:{" "}
          <a href="/api/openapi.json">/api/openapi.json</a>
        </p>
      </footer>
    </div>
  );
}
