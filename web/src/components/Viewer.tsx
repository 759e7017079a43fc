import type { Prediction } from "../api";

interface Props {
  result: Prediction;
  finding: string | null;
  opacity: number;
  onOpacity: (value: number) => void;
  heatmapState: "ready" | "loading" | "missing";
}

/** The upload with the selected finding's Grad-CAM laid over it, beside what the model saw. */
export function Viewer({ result, finding, opacity, onOpacity, heatmapState }: Props) {
  const heatmap = finding ? result.heatmaps[finding] : undefined;
  const { width, height } = result.image;
  return (
    <div className="viewer">
      <figure className="view">
        <div className="stack">
          {result.image.original && (
            <img src={result.image.original} alt={`Uploaded X-ray ${result.file}`} />
          )}
          {heatmap && (
            <img
              className="heat"
              data-testid="heatmap"
              src={heatmap}
              alt={`Grad-CAM heatmap for ${finding}`}
              style={{ opacity }}
            />
          )}
        </div>
        <figcaption>
          Original, {width}×{height}
          {finding && heatmapState === "ready" && heatmap && <> · Grad-CAM: {finding}</>}
          {heatmapState === "loading" && <> · computing heatmap…</>}
        </figcaption>
        <label className="opacity">
          Heatmap opacity
          <input
            type="range"
            min={0}
            max={1}
            step={0.05}
            value={opacity}
            disabled={!heatmap}
            onChange={(e) => onOpacity(Number(e.target.value))}
          />
          <output>{Math.round(opacity * 100)}%</output>
        </label>
      </figure>
      <figure className="view">
        <div className="stack">
          {result.image.preprocessed && (
            <img
              className="pixelated"
              src={result.image.preprocessed}
              alt="The preprocessed image the model saw (CLAHE)"
            />
          )}
        </div>
        <figcaption>What the model saw: resized, CLAHE contrast, padded to a square</figcaption>
      </figure>
    </div>
  );
}
