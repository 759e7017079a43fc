import { useCallback, useEffect, useRef, useState } from "react";
import {
  ApiError,
  fetchModel,
  predict,
  previewDepth,
  type ModelInfo as Info,
} from "./api";
import { countCalls, countsText, humanName, percent } from "./calls";
import { DropZone } from "./components/DropZone";
import { FindingsList } from "./components/FindingsList";
import { ModelInfo } from "./components/ModelInfo";
import { ResultsTable } from "./components/ResultsTable";
import { Viewer } from "./components/Viewer";
import { toCsv } from "./csv";
import { forgetAll, forgetItem, loadHistory, saveItem, type StoredItem } from "./history";

export const NOTICE =
  "Research software: not a medical device. Predictions must not be used for diagnosis or treatment decisions.";

export interface Item extends StoredItem {
  running?: boolean;
}

type Layer = "last" | "finer";
const mapKey = (layer: Layer, finding: string) => (layer === "last" ? finding : `${layer}:${finding}`);

function describe(err: unknown): { error: string; errorDetail?: string } {
  if (err instanceof ApiError) {
    return { error: err.message, errorDetail: err.detail && err.detail !== err.message ? err.detail : undefined };
  }
  return { error: err instanceof Error ? err.message : String(err) };
}

const SHORTCUTS: [string, string][] = [
  ["J or →", "next image"],
  ["K or ←", "previous image"],
  ["↑ ↓", "move within the findings list or the results list"],
  ["H", "heatmap over the image on/off"],
  ["+ / − / wheel / pinch", "zoom; drag to pan"],
  ["0 / 1", "fit / one preview pixel per screen pixel"],
  ["W, or Shift-drag", "drag sets window (left-right) and level (up-down)"],
  ["L / M / B / R", "lung, mediastinum, bone window; reset"],
  ["I", "invert"],
  ["S", "side by side: original, what the model saw, heatmap"],
  ["F", "full screen"],
  ["?", "this help"],
];

export function App() {
  const [info, setInfo] = useState<Info | null>(null);
  const [infoError, setInfoError] = useState<string | null>(null);
  const [items, setItems] = useState<Item[]>([]);
  const [selected, setSelected] = useState<number | null>(null);
  const [finding, setFinding] = useState<string | null>(null);
  const [opacity, setOpacity] = useState(0.5);
  const [overlay, setOverlay] = useState(true);
  const [layer, setLayer] = useState<Layer>("last");
  const [includeUnreliable, setIncludeUnreliable] = useState(false);
  const [help, setHelp] = useState(false);
  const [dragOver, setDragOver] = useState(false);
  const [announcement, setAnnouncement] = useState("");
  const [loadingHeatmap, setLoadingHeatmap] = useState<string | null>(null);
  const [heatmapError, setHeatmapError] = useState<string | null>(null);
  const nextId = useRef(1);
  const running = useRef<number | null>(null);
  const controllers = useRef(new Map<number, AbortController>());
  const viewerBox = useRef<HTMLDivElement>(null);

  useEffect(() => {
    fetchModel()
      .then(setInfo)
      .catch((err) => setInfoError(`Model information unavailable: ${describe(err).error}`));
    loadHistory()
      .then((stored) => {
        if (!stored.length) return;
        nextId.current = Math.max(...stored.map((s) => s.id)) + 1;
        setItems((list) => [...stored, ...list]);
        setSelected((current) => current ?? stored[stored.length - 1].id);
      })
      .catch(() => undefined); // private windows may refuse IndexedDB: the page still works
  }, []);

  const update = (id: number, patch: Partial<Item>) =>
    setItems((list) =>
      list.map((i) => {
        if (i.id !== id) return i;
        const next = { ...i, ...patch };
        if (!next.running) void saveItem(strip(next)).catch(() => undefined);
        return next;
      }),
    );

  // One upload at a time, in the order the files were given: the server has few cores.
  useEffect(() => {
    if (running.current !== null) return;
    const next = items.find((i) => !i.result && !i.error && !i.running);
    if (!next) return;
    running.current = next.id;
    const controller = new AbortController();
    controllers.current.set(next.id, controller);
    update(next.id, { running: true });
    previewDepth(next.blob, next.name)
      .then((depth) => predict(next.blob, next.name, { heatmaps: "auto", depth, signal: controller.signal }))
      .then((result) => {
        update(next.id, { running: false, result, error: undefined, errorDetail: undefined });
        setSelected((current) => current ?? next.id);
        const c = countCalls(result.findings);
        setAnnouncement(
          `Result for ${next.name}: ${countsText(c)}. Top finding ${humanName(result.top_finding)} ${percent(
            result.findings[0].probability,
          )}.`,
        );
      })
      .catch((err) => {
        const d = describe(err);
        update(next.id, { running: false, ...d });
        setAnnouncement(`${next.name}: ${d.error}`);
      })
      .finally(() => {
        controllers.current.delete(next.id);
        running.current = null;
        setItems((list) => [...list]); // wake the queue for the next file
      });
  }, [items]); // eslint-disable-line react-hooks/exhaustive-deps

  const addFiles = useCallback((files: File[]) => {
    const added: Item[] = files.map((file) => ({ id: nextId.current++, name: file.name, blob: file, added: Date.now() }));
    setItems((list) => [...list, ...added]);
    setSelected(added[0].id);
    setFinding(null);
  }, []);

  // Files dropped anywhere on the page are taken, not only on the drop box.
  useEffect(() => {
    const over = (e: DragEvent) => {
      if (!e.dataTransfer?.types.includes("Files")) return;
      e.preventDefault();
      setDragOver(true);
    };
    const leave = (e: DragEvent) => {
      if (!e.relatedTarget) setDragOver(false);
    };
    const drop = (e: DragEvent) => {
      e.preventDefault();
      setDragOver(false);
      const files = e.dataTransfer ? Array.from(e.dataTransfer.files) : [];
      if (files.length) addFiles(files);
    };
    window.addEventListener("dragover", over);
    window.addEventListener("dragleave", leave);
    window.addEventListener("drop", drop);
    return () => {
      window.removeEventListener("dragover", over);
      window.removeEventListener("dragleave", leave);
      window.removeEventListener("drop", drop);
    };
  }, [addFiles]);

  const current = items.find((i) => i.id === selected) ?? null;
  const result = current?.result ?? null;
  const shownFinding =
    finding && result?.findings.some((f) => f.finding === finding) ? finding : (result?.top_finding ?? null);

  const step = useCallback(
    (delta: number) => {
      if (!items.length) return;
      const index = items.findIndex((i) => i.id === selected);
      const to = Math.min(items.length - 1, Math.max(0, (index < 0 ? 0 : index) + delta));
      setSelected(items[to].id);
      setFinding(null);
    },
    [items, selected],
  );

  useEffect(() => {
    const keys = (e: KeyboardEvent) => {
      const target = e.target as HTMLElement | null;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (target && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
      if (e.key === "j" || e.key === "J" || e.key === "ArrowRight") step(1);
      else if (e.key === "k" || e.key === "K" || e.key === "ArrowLeft") step(-1);
      else if (e.key === "?") setHelp((h) => !h);
      else if (e.key === "Escape" && help) setHelp(false);
      else return;
      e.preventDefault();
    };
    document.addEventListener("keydown", keys);
    return () => document.removeEventListener("keydown", keys);
  }, [step, help]);

  const fetchHeatmap = async (name: string, wanted: Layer) => {
    if (!current?.result || current.result.heatmaps[mapKey(wanted, name)]) return;
    setLoadingHeatmap(name);
    try {
      const extra = await predict(current.blob, current.name, { heatmaps: name, images: false, heatmapLayer: wanted });
      const r = current.result;
      const heatmaps = { ...r.heatmaps };
      const notes = { ...(r.heatmap_notes ?? {}) };
      for (const [f, url] of Object.entries(extra.heatmaps)) heatmaps[mapKey(wanted, f)] = url;
      for (const [f, note] of Object.entries(extra.heatmap_notes ?? {})) notes[mapKey(wanted, f)] = note;
      const grids = { last: r.heatmap_grid ?? null, ...(r.heatmap_grids ?? {}), [wanted]: extra.heatmap_grid ?? null };
      update(current.id, { result: { ...r, heatmaps, heatmap_notes: notes, heatmap_grids: grids } });
    } catch (err) {
      setHeatmapError(describe(err).error);
    } finally {
      setLoadingHeatmap(null);
    }
  };

  const selectFinding = (name: string) => {
    setFinding(name);
    setHeatmapError(null);
    // On a phone the list sits under the image: keep the image in view when a finding is tapped.
    const box = viewerBox.current?.getBoundingClientRect();
    if (box && box.height > 0 && (box.bottom < 80 || box.top > window.innerHeight - 80)) {
      viewerBox.current?.scrollIntoView?.({ block: "start", behavior: "auto" });
    }
    void fetchHeatmap(name, layer);
  };

  const changeLayer = (wanted: Layer) => {
    setLayer(wanted);
    if (shownFinding) void fetchHeatmap(shownFinding, wanted);
  };

  const cancel = (id: number) => controllers.current.get(id)?.abort();
  const retry = (id: number) => update(id, { error: undefined, errorDetail: undefined, result: undefined });
  const remove = (id: number) => {
    cancel(id);
    setItems((list) => list.filter((i) => i.id !== id));
    if (selected === id) setSelected(null);
    void forgetItem(id).catch(() => undefined);
  };
  const forget = () => {
    controllers.current.forEach((c) => c.abort());
    setItems([]);
    setSelected(null);
    forgetAll()
      .then(() => setAnnouncement("All results were deleted from this browser."))
      .catch(() => setAnnouncement("This browser refused to delete the stored results."));
  };

  const download = () => {
    const csv = toCsv(
      items.map((i) => ({ file: i.name, result: i.result, error: i.error })),
      NOTICE,
      {
        model: info?.name ?? "unknown",
        version: info?.version ?? "unknown",
        thresholdMethod: info?.threshold_method ?? "validation split",
        exported: new Date().toISOString(),
      },
    );
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "cxr-predictions.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  const key = shownFinding ? mapKey(layer, shownFinding) : null;
  const heatmap = key && result ? result.heatmaps[key] : undefined;
  const grids = result?.heatmap_grids;
  const grid = layer === "last" ? (grids?.last ?? result?.heatmap_grid ?? null) : (grids?.finer ?? null);
  const counts = result ? countCalls(result.findings, includeUnreliable) : null;

  return (
    <div className={`app${dragOver ? " dragging" : ""}`}>
      <a className="skip" href="#detail">
        Skip to the result
      </a>
      <header>
        <h1>cxr · chest X-ray classifier</h1>
        <p className="notice" role="note">
          <strong>Not a medical device.</strong> {info?.notice ?? NOTICE}
        </p>
      </header>
      <div className="sr-only" aria-live="polite" data-testid="announcer">
        {announcement}
      </div>
      {dragOver && (
        <div className="drop-veil" aria-hidden="true">
          Drop to analyse
        </div>
      )}
      <main>
        <div className="side">
          <DropZone onFiles={addFiles} busy={items.length > 0} over={dragOver} />
          {items.length > 0 && (
            <ResultsTable
              items={items}
              selected={selected}
              includeUnreliable={includeUnreliable}
              onSelect={(id) => {
                setSelected(id);
                setFinding(null);
              }}
              onRemove={remove}
              onRetry={retry}
              onCancel={cancel}
              onForgetAll={forget}
              onDownload={download}
            />
          )}
          <ModelInfo info={info} error={infoError} />
        </div>
        <div className="detail" id="detail" tabIndex={-1}>
          {!current && (
            <section className="panel empty" aria-labelledby="empty-title">
              <h2 id="empty-title">No image yet</h2>
              <p>
                Choose or drop a chest radiograph. It is analysed in memory on this server and not stored there; the
                results stay in this browser until you forget them.
              </p>
              <p className="hint">
                Press <kbd>?</kbd> for keyboard shortcuts.
              </p>
            </section>
          )}
          {current && current.error && (
            <section className="panel" aria-labelledby="error-title">
              <h2 id="error-title">{current.name}</h2>
              <p className="error" role="alert">
                {current.error}
              </p>
              {current.errorDetail && (
                <details className="error-detail">
                  <summary>Details from the server</summary>
                  <p>{current.errorDetail}</p>
                </details>
              )}
              <button type="button" className="primary" onClick={() => retry(current.id)}>
                Retry
              </button>
            </section>
          )}
          {current && !current.result && !current.error && (
            <section className="panel" aria-busy="true" aria-labelledby="busy-title">
              <h2 id="busy-title">{current.name}</h2>
              <p className="muted busy">
                <span className="spinner" aria-hidden="true" /> Analysing…{" "}
                <button type="button" onClick={() => cancel(current.id)}>
                  Cancel
                </button>
              </p>
            </section>
          )}
          {result && current && (
            <section className="panel result" aria-labelledby="result-title">
              <h2 id="result-title">{current.name}</h2>
              {!result.ood.checked && (
                <p className="banner warn" data-testid="no-gate-banner">
                  <strong>Input checks are off for this model.</strong> It will score any image, even one that is not a
                  chest X-ray; check the image yourself.
                </p>
              )}
              {result.warnings?.map((w) => (
                <p className="banner warn" key={w}>
                  {w}
                </p>
              ))}
              <div className="result-body">
              <div className="viewer-box" ref={viewerBox}>
                <Viewer
                  result={result}
                  finding={shownFinding}
                  heatmap={heatmap}
                  heatmapNote={key ? result.heatmap_notes?.[key] : undefined}
                  heatmapState={loadingHeatmap === shownFinding ? "loading" : heatmap ? "ready" : "missing"}
                  grid={grid}
                  layer={layer}
                  onLayer={changeLayer}
                  opacity={opacity}
                  onOpacity={setOpacity}
                  overlay={overlay}
                  onOverlay={setOverlay}
                />
              </div>
              <div className="result-findings">
              <h3>Findings</h3>
              <p className="summary" data-testid="summary">
                Of {result.findings.length} findings: {counts && countsText(counts, includeUnreliable)}
              </p>
              <p className="hint">
                Bar: probability. Black tick: the threshold chosen on validation. Shaded: the borderline band, where a
                score is called “possible” rather than positive or negative. Greyed: findings the model cannot call
                reliably (validation AUROC ≤ {info?.reliable_auroc ?? 0.6}).
              </p>
              {(counts?.unreliable ?? 0) > 0 && (
              <label className="check">
                <input
                  type="checkbox"
                  checked={includeUnreliable}
                  onChange={(e) => setIncludeUnreliable(e.target.checked)}
                />{" "}
                Count unreliable findings too
              </label>
              )}
              <FindingsList findings={result.findings} selected={shownFinding} onSelect={selectFinding} />
              {heatmapError && (
                <p className="error" role="alert">
                  {heatmapError}
                </p>
              )}
              {result.dicom && (
                <details className="dicom">
                  <summary>DICOM header</summary>
                  <dl data-testid="dicom-header">
                    <dt>Modality</dt>
                    <dd>{result.dicom.modality ?? "not stated"}</dd>
                    <dt>View</dt>
                    <dd>{result.dicom.view_position ?? "not stated"}</dd>
                    <dt>Body part</dt>
                    <dd>{result.dicom.body_part ?? "not stated"}</dd>
                    <dt>Rows × columns</dt>
                    <dd>
                      {result.dicom.rows ?? "?"} × {result.dicom.columns ?? "?"}
                    </dd>
                    <dt>Bits stored / allocated</dt>
                    <dd>
                      {result.dicom.bits_stored ?? "?"} / {result.dicom.bits_allocated ?? "?"}
                    </dd>
                    <dt>Photometric interpretation</dt>
                    <dd>{result.dicom.photometric_interpretation ?? "not stated"}</dd>
                    <dt>Transfer syntax</dt>
                    <dd>{result.dicom.transfer_syntax ?? "not stated"}</dd>
                  </dl>
                  <p className="hint">Patient identifiers are never read into this page.</p>
                </details>
              )}
              <p className="meta">
                {Math.round(result.seconds * 1000)} ms on the server
                {result.ood.checked &&
                  ` · input check passed (out-of-distribution score ${result.ood.score?.toFixed(2) ?? "?"})`}
              </p>
              </div>
              </div>
            </section>
          )}
        </div>
      </main>
      {help && (
        <section className="panel help" role="dialog" aria-labelledby="help-title" aria-modal="false">
          <h2 id="help-title">Keyboard shortcuts</h2>
          <dl>
            {SHORTCUTS.map(([k, what]) => (
              <div key={k}>
                <dt>
                  <kbd>{k}</kbd>
                </dt>
                <dd>{what}</dd>
              </div>
            ))}
          </dl>
          <button type="button" onClick={() => setHelp(false)}>
            Close
          </button>
        </section>
      )}
      <footer>
        <p>
          {NOTICE} Uploads are processed in memory.{" "}
          <button type="button" className="link" onClick={() => setHelp(true)}>
            Keyboard shortcuts (?)
          </button>{" "}
          API description: <a href="/api/openapi.json">/api/openapi.json</a>
        </p>
      </footer>
    </div>
  );
}

/** What goes into IndexedDB: the item without its in-flight state. */
function strip(item: Item): StoredItem {
  const { running: _running, ...rest } = item;
  return rest;
}
