import { useCallback, useEffect, useRef, useState } from "react";
import type { Prediction } from "../api";
import { humanName } from "../calls";
import { loadGrey, type LoadedGrey } from "../display";
import {
  applyWindow,
  dragWindow,
  FULL_WINDOW,
  presetWindow,
  PRESETS,
  type GreyImage,
  type Window,
} from "../windowing";

/** Zoom and pan shared by every pane: x, y as fractions of the pane (so panes of different
 * sizes stay linked), scale 1 = the whole image fitted. */
export interface View {
  scale: number;
  x: number;
  y: number;
}
export const FIT: View = { scale: 1, x: 0, y: 0 };
const MAX_SCALE = 32;

interface Props {
  result: Prediction;
  finding: string | null;
  heatmap?: string;
  heatmapNote?: string;
  heatmapState: "ready" | "loading" | "missing";
  grid: number | null;
  layer: "last" | "finer";
  onLayer: (layer: "last" | "finer") => void;
  opacity: number;
  onOpacity: (value: number) => void;
  overlay: boolean;
  onOverlay: (on: boolean) => void;
}

/** Zoom `view` by `factor` around the point (px, py), given as fractions of the pane. */
export function zoomAt(view: View, factor: number, px: number, py: number): View {
  const scale = Math.min(MAX_SCALE, Math.max(1, view.scale * factor));
  const f = scale / view.scale;
  if (scale === 1) return FIT;
  return { scale, x: px - (px - view.x) * f, y: py - (py - view.y) * f };
}

/** Keep at least part of the image in the pane. */
function clampView(v: View): View {
  const min = 1 - v.scale;
  return { ...v, x: Math.min(0, Math.max(min, v.x)), y: Math.min(0, Math.max(min, v.y)) };
}

const TURBO =
  "linear-gradient(to right, #30123b, #4686fb 12.5%, #1ae4b6 25%, #72fe5e 37.5%, #c8ef34 50%, #faba39 62.5%, #f66b19 75%, #ca2a04 87.5%, #7a0403)";

/** The upload (windowed at its own bit depth) with the finding's Grad-CAM over it; side by side
 * with what the model saw and the map alone, all linked for zoom and pan. */
export function Viewer(props: Props) {
  const { result, finding, heatmap, heatmapNote, heatmapState, opacity, overlay } = props;
  const [view, setView] = useState<View>(FIT);
  const [win, setWin] = useState<Window>(FULL_WINDOW);
  const [dragMode, setDragMode] = useState<"pan" | "window">("pan");
  const [sideBySide, setSideBySide] = useState(false);
  const root = useRef<HTMLDivElement>(null);
  // The lossless display image is fetched separately (the answer carries a JPEG preview only);
  // until it arrives, or when it has expired, the pane shows the preview.
  const [loaded, setLoaded] = useState<LoadedGrey>({ grey: null, source: "none" });
  useEffect(() => {
    let live = true;
    setLoaded({ grey: null, source: "none" });
    void loadGrey(result.image).then((l) => live && setLoaded(l));
    return () => {
      live = false;
    };
  }, [result.image]);
  const grey: GreyImage | null = loaded.grey;

  useEffect(() => {
    setView(FIT);
    setWin(FULL_WINDOW);
  }, [result]);

  const preset = (name: keyof typeof PRESETS) => grey && setWin(presetWindow(grey, name, win.invert));
  const oneToOne = () => {
    const pane = root.current?.querySelector<HTMLElement>(".pane");
    if (!pane) return;
    const scale = Math.max(1, (grey?.width ?? result.image.display_width) / pane.clientWidth);
    setView(clampView({ scale, x: (1 - scale) / 2, y: (1 - scale) / 2 }));
  };
  const fullScreen = () => {
    if (document.fullscreenElement) void document.exitFullscreen();
    else void root.current?.requestFullscreen?.();
  };

  // Keys for the viewer; the page's own keys (next image, help) live in App.
  const keys = useCallback(
    (e: KeyboardEvent) => {
      const target = e.target as HTMLElement | null;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (target && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
      const k = e.key;
      if (k === "+" || k === "=") setView((v) => zoomAt(v, 1.25, 0.5, 0.5));
      else if (k === "-") setView((v) => clampView(zoomAt(v, 0.8, 0.5, 0.5)));
      else if (k === "0") setView(FIT);
      else if (k === "1") oneToOne();
      else if (k === "h" || k === "H") props.onOverlay(!overlay);
      else if (k === "i" || k === "I") setWin((w) => ({ ...w, invert: !w.invert }));
      else if (k === "w" || k === "W") setDragMode((m) => (m === "pan" ? "window" : "pan"));
      else if (k === "r" || k === "R") setWin(FULL_WINDOW);
      else if (k === "l" || k === "L") preset("lung");
      else if (k === "m" || k === "M") preset("mediastinum");
      else if (k === "b" || k === "B") preset("bone");
      else if (k === "f" || k === "F") fullScreen();
      else if (k === "s" || k === "S") setSideBySide((s) => !s);
      else return;
      e.preventDefault();
    },
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [overlay, grey, win.invert, props.onOverlay],
  );
  useEffect(() => {
    document.addEventListener("keydown", keys);
    return () => document.removeEventListener("keydown", keys);
  }, [keys]);

  const mapCaption = !finding
    ? null
    : heatmapState === "loading"
      ? `computing the Grad-CAM map for ${humanName(finding)}…`
      : heatmapNote
        ? `Grad-CAM for ${humanName(finding)}: ${heatmapNote}`
        : heatmap
          ? `Grad-CAM for ${humanName(finding)}`
          : `no Grad-CAM map for ${humanName(finding)} yet`;
  const grid = props.grid;

  const panes = [
    <Pane
      key="original"
      label={`The uploaded X-ray ${result.file}${heatmap && overlay ? `, with the Grad-CAM map for ${finding}` : ""}`}
      title="Original"
      grey={grey}
      fallbackSrc={result.image.original ?? undefined}
      win={win}
      overlaySrc={overlay && !heatmapNote ? heatmap : undefined}
      opacity={opacity}
      view={view}
      setView={setView}
      setWin={setWin}
      dragMode={dragMode}
      aspect={result.image.display_width / result.image.display_height}
    />,
  ];
  if (sideBySide) {
    panes.push(
      <Pane
        key="model"
        label="What the model saw: resized, CLAHE contrast, padded to a square"
        title="What the model saw"
        fallbackSrc={result.image.preprocessed ?? undefined}
        pixelated
        view={view}
        setView={setView}
        dragMode="pan"
        aspect={1}
      />,
      <Pane
        key="heat"
        label={`The Grad-CAM map alone for ${finding ?? "no finding"}`}
        title="Heatmap alone"
        overlaySrc={heatmapNote ? undefined : heatmap}
        opacity={1}
        dark
        view={view}
        setView={setView}
        dragMode="pan"
        aspect={result.image.display_width / result.image.display_height}
      />,
    );
  }

  return (
    <div className="viewer" ref={root}>
      <div className="toolbar" role="toolbar" aria-label="Image tools">
        <button type="button" onClick={() => setView((v) => zoomAt(v, 1.25, 0.5, 0.5))} aria-label="Zoom in (+)">
          +
        </button>
        <button type="button" onClick={() => setView((v) => clampView(zoomAt(v, 0.8, 0.5, 0.5)))} aria-label="Zoom out (−)">
          −
        </button>
        <button type="button" onClick={() => setView(FIT)} title="Fit (0)">
          Fit
        </button>
        <button type="button" onClick={oneToOne} title="One preview pixel per screen pixel (1)">
          1:1
        </button>
        <button type="button" onClick={fullScreen} title="Full screen (F)">
          Full screen
        </button>
        <button
          type="button"
          aria-pressed={dragMode === "window"}
          onClick={() => setDragMode((m) => (m === "pan" ? "window" : "pan"))}
          title="Drag sets window/level instead of panning (W); Shift-drag always does"
        >
          Window/level drag
        </button>
        <label className="preset">
          <span>Preset</span>
          <select
            aria-label="Window preset"
            value=""
            onChange={(e) => {
              const v = e.target.value;
              if (v === "full") setWin({ ...FULL_WINDOW, invert: win.invert });
              else if (v) preset(v as keyof typeof PRESETS);
            }}
          >
            <option value="">choose…</option>
            <option value="full">Full range (R)</option>
            <option value="lung">Lung (L)</option>
            <option value="mediastinum">Mediastinum (M)</option>
            <option value="bone">Bone (B)</option>
          </select>
        </label>
        <button type="button" aria-pressed={win.invert} onClick={() => setWin((w) => ({ ...w, invert: !w.invert }))} title="Invert (I)">
          Invert
        </button>
        <button type="button" aria-pressed={overlay} onClick={() => props.onOverlay(!overlay)} title="Show the heatmap over the image (H)">
          Heatmap
        </button>
        <button type="button" aria-pressed={sideBySide} onClick={() => setSideBySide((s) => !s)} title="Side by side (S)">
          Side by side
        </button>
      </div>
      <div className={`panes${sideBySide ? " three" : ""}`}>{panes}</div>
      <p className="viewer-status" data-testid="viewer-status">
        <span data-testid="zoom">zoom {Math.round(view.scale * 100)}%</span> · window{" "}
        <span data-testid="window">
          {Math.round(win.center * 100)}% ± {Math.round((win.width * 100) / 2)}%
        </span>
        {win.invert && " · inverted"} ·{" "}
        <span data-testid="depth">
          {grey ? `${grey.maxValue === 65535 ? 16 : 8}-bit ${loaded.source === "display" ? "image" : "preview"}` : "preview"}
        </span>{" "}
        {grey ? `${grey.width}×${grey.height}` : `${result.image.preview_width ?? result.image.display_width}×${result.image.preview_height ?? result.image.display_height}`} of{" "}
        {result.image.width}×{result.image.height}
      </p>
      {loaded.note && (
        <p className="hint" data-testid="depth-note">
          {loaded.note}
        </p>
      )}
      <div className="map-info">
        <p className="caption" data-testid="map-caption">
          {mapCaption ?? "Choose a finding to see where the model looked."}
          {grid ? (
            <>
              {" "}
              · resolution: {grid}×{grid} cells ({props.layer === "finer" ? "finer layer" : "last layer"}), so it shows
              the region, not the outline.
            </>
          ) : null}
        </p>
        {grid ? (
          <button type="button" onClick={() => props.onLayer(props.layer === "last" ? "finer" : "last")}>
            {props.layer === "last" ? "Use the finer layer" : "Use the last layer"}
          </button>
        ) : null}
        <div className="scale" aria-label="Heatmap colour scale: blue is little evidence, red is the most">
          <span>less evidence</span>
          <span className="scale-bar" style={{ background: TURBO }} />
          <span>more</span>
        </div>
        <label className="opacity">
          Heatmap opacity
          <input
            type="range"
            min={0}
            max={1}
            step={0.05}
            value={opacity}
            disabled={!heatmap || !overlay}
            aria-valuetext={`opacity ${Math.round(opacity * 100)}%`}
            onChange={(e) => props.onOpacity(Number(e.target.value))}
          />
          <output>{Math.round(opacity * 100)}%</output>
        </label>
      </div>
    </div>
  );
}

interface PaneProps {
  label: string;
  title: string;
  grey?: GreyImage | null;
  fallbackSrc?: string;
  win?: Window;
  overlaySrc?: string;
  opacity?: number;
  pixelated?: boolean;
  dark?: boolean;
  view: View;
  setView: (update: (v: View) => View) => void;
  setWin?: (update: (w: Window) => Window) => void;
  dragMode: "pan" | "window";
  aspect: number;
}

function Pane(p: PaneProps) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const box = useRef<HTMLDivElement>(null);
  const pointers = useRef(new Map<number, { x: number; y: number }>());
  const drag = useRef<{ mode: "pan" | "window"; x: number; y: number } | null>(null);
  const { grey, win } = p;

  useEffect(() => {
    const c = canvas.current;
    if (!c || !grey || !win) return;
    c.width = grey.width;
    c.height = grey.height;
    const ctx = c.getContext("2d");
    if (!ctx) return;
    const image = ctx.createImageData(grey.width, grey.height);
    applyWindow(grey, win, image.data);
    ctx.putImageData(image, 0, 0);
  }, [grey, win]);

  // wheel zoom needs a non-passive listener to stop the page scrolling
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const wheel = (e: WheelEvent) => {
      e.preventDefault();
      const r = el.getBoundingClientRect();
      const factor = Math.exp(-e.deltaY / 400);
      p.setView((v) => clampView(zoomAt(v, factor, (e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height)));
    };
    el.addEventListener("wheel", wheel, { passive: false });
    return () => el.removeEventListener("wheel", wheel);
  }, [p.setView]); // eslint-disable-line react-hooks/exhaustive-deps

  const onDown = (e: React.PointerEvent) => {
    (e.currentTarget as HTMLElement).setPointerCapture?.(e.pointerId);
    pointers.current.set(e.pointerId, { x: e.clientX, y: e.clientY });
    const mode = e.shiftKey || e.button === 2 ? "window" : p.dragMode;
    drag.current = { mode: p.setWin ? mode : "pan", x: e.clientX, y: e.clientY };
  };
  const onMove = (e: React.PointerEvent) => {
    const el = box.current;
    const prev = pointers.current.get(e.pointerId);
    if (!el || !prev || !drag.current) return;
    const r = el.getBoundingClientRect();
    if (pointers.current.size === 2) {
      // pinch: the change in finger distance zooms about their midpoint
      const [a, b] = [...pointers.current.entries()].map(([id, q]) =>
        id === e.pointerId ? { x: e.clientX, y: e.clientY } : q,
      );
      const [a0, b0] = [...pointers.current.values()];
      const before = Math.hypot(a0.x - b0.x, a0.y - b0.y);
      const after = Math.hypot(a.x - b.x, a.y - b.y);
      if (before > 0) {
        const mx = ((a.x + b.x) / 2 - r.left) / r.width;
        const my = ((a.y + b.y) / 2 - r.top) / r.height;
        p.setView((v) => clampView(zoomAt(v, after / before, mx, my)));
      }
    } else {
      const dx = e.clientX - prev.x;
      const dy = e.clientY - prev.y;
      if (drag.current.mode === "window" && p.setWin) {
        p.setWin((w) => dragWindow(w, dx, dy, r.width));
      } else {
        p.setView((v) => clampView({ ...v, x: v.x + dx / r.width, y: v.y + dy / r.height }));
      }
    }
    pointers.current.set(e.pointerId, { x: e.clientX, y: e.clientY });
  };
  const onUp = (e: React.PointerEvent) => {
    pointers.current.delete(e.pointerId);
    if (pointers.current.size === 0) drag.current = null;
  };

  const transform = `translate(${p.view.x * 100}%, ${p.view.y * 100}%) scale(${p.view.scale})`;
  return (
    <figure className="pane-figure">
      <div
        ref={box}
        className={`pane${p.dark ? " dark" : ""}${p.dragMode === "window" ? " window-mode" : ""}`}
        style={{ aspectRatio: String(p.aspect), "--aspect": String(p.aspect) } as React.CSSProperties}
        role="img"
        aria-label={p.label}
        data-testid="pane"
        onPointerDown={onDown}
        onPointerMove={onMove}
        onPointerUp={onUp}
        onPointerCancel={onUp}
        onContextMenu={(e) => e.preventDefault()}
        onDoubleClick={() => p.setView(() => FIT)}
      >
        <div className="content" style={{ transform }}>
          {p.grey ? (
            <canvas ref={canvas} data-testid="image-canvas" />
          ) : p.fallbackSrc ? (
            <img src={p.fallbackSrc} alt="" className={p.pixelated ? "pixelated" : undefined} draggable={false} />
          ) : null}
          {p.overlaySrc && (
            <img
              className="heat"
              data-testid={p.dark ? "heatmap-alone" : "heatmap"}
              src={p.overlaySrc}
              alt=""
              draggable={false}
              style={{ opacity: p.opacity }}
            />
          )}
        </div>
      </div>
      <figcaption>{p.title}</figcaption>
    </figure>
  );
}
