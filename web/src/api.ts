// The API's JSON shapes (see /api/openapi.json) and the calls the page makes.

export type Call = "positive" | "possible" | "negative";

export interface Finding {
  finding: string;
  probability: number;
  threshold: number;
  positive: boolean; // probability >= threshold (kept for older clients)
  call?: Call; // positive / possible (inside the borderline band) / negative
  margin?: number; // probability - threshold
  band?: [number, number]; // [low, high] borderline band from validation
  auroc?: number | null; // validation AUROC; null when not estimable
  reliable?: boolean; // validation AUROC > 0.6
}

export interface OodResult {
  checked: boolean;
  ok?: boolean;
  score?: number | null;
  threshold?: number | null;
  reason?: string;
}

export interface DicomHeader {
  modality: string | null;
  view_position: string | null;
  body_part: string | null;
  rows: number | null;
  columns: number | null;
  bits_stored: number | null;
  bits_allocated: number | null;
  photometric_interpretation: string | null;
  transfer_syntax: string | null;
}

export interface Prediction {
  file: string;
  findings: Finding[]; // highest probability first
  top_finding: string;
  image: {
    width: number;
    height: number;
    display_width: number;
    display_height: number;
    original?: string; // PNG data URL (8- or 16-bit grey)
    preprocessed?: string; // PNG data URL: what the model saw
    depth?: 8 | 16;
  };
  heatmaps: Record<string, string>; // finding -> RGBA PNG data URL, display size
  heatmap_layer?: string;
  heatmap_grid?: number | null; // cells a side of the Grad-CAM layer
  heatmap_notes?: Record<string, string>; // finding -> why its map shows nothing useful
  heatmap_grids?: Record<string, number | null>; // client side: grid of each layer fetched
  dicom?: DicomHeader | null;
  ood: OodResult;
  seconds: number;
  timing: Record<string, number>;
  warnings?: string[];
  notice: string;
}

export interface FindingMetrics {
  auroc: number | null;
  sensitivity: number | null;
  specificity: number | null;
  n_positive?: number | null;
}

export interface MetricsSummary {
  n_images: number | null;
  mean_auroc: number | null;
  accuracy: number | null;
  per_finding: Record<string, FindingMetrics>;
}

export interface OperatingPoint {
  threshold: number;
  low: number;
  high: number;
  band_source: string;
  auroc: number | null;
  reliable: boolean;
}

export interface ModelInfo {
  name: string;
  version?: string;
  arch: string;
  task: string;
  findings: string[];
  thresholds: Record<string, number>;
  threshold_method?: string;
  image_size: number;
  training_data: { source?: string; path?: string; n_train?: number; n_val?: number };
  metrics: { validation: MetricsSummary | null; test: MetricsSummary | null };
  ood_gate?: { enabled: boolean; note: string };
  operating_points?: Record<string, OperatingPoint>;
  reliable_auroc?: number;
  model_card: { intended_use: string; not_for: string; training_data: string; limitations: string };
  notice: string;
}

/** An error the page can show: a plain sentence, and the server's own words as details. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly detail?: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The sentence a person reads for each kind of failure; the server's text goes in details. */
export function plainMessage(code: string, serverText: string): string {
  switch (code) {
    case "unreadable_image":
      return "This file could not be read as an X-ray image. It may be damaged, cut short, or not a PNG, JPEG or DICOM file.";
    case "not_a_chest_xray":
      return `This does not look like a chest X-ray, so it was not analysed: ${serverText}`;
    case "too_large":
    case "too_many_pixels":
      return `This file is too big for this server: ${serverText}`;
    default:
      return serverText;
  }
}

type Fetch = typeof fetch;

async function call<T>(url: string, init: RequestInit | undefined, fetchFn: Fetch): Promise<T> {
  let response: Response;
  try {
    response = await fetchFn(url, init);
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") {
      throw new ApiError("Cancelled.", 0, "cancelled");
    }
    throw new ApiError(
      "The analysis server did not answer. It may have stopped, or the network dropped. Try again in a moment; if it keeps failing, ask whoever runs this service.",
      0,
      "network",
    );
  }
  const text = await response.text();
  let body: unknown = undefined;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  if (!response.ok) {
    const err = body as { error?: string; code?: string } | undefined;
    if (err && typeof err.error === "string") {
      const code = err.code ?? "error";
      throw new ApiError(plainMessage(code, err.error), response.status, code, err.error);
    }
    throw new ApiError(
      `The server answered ${response.status} ${response.statusText || ""}`.trim() +
        " without an explanation. Try again; if it persists, tell whoever runs this service.",
      response.status,
      "http",
    );
  }
  if (body === undefined) {
    throw new ApiError("The server's answer was not JSON.", response.status, "bad_response");
  }
  return body as T;
}

export interface PredictOptions {
  heatmaps?: string; // auto | none | top | positive | all | comma-separated finding names
  images?: boolean;
  depth?: 8 | 16; // bits of the preview PNG: 16 keeps a DICOM's or 16-bit PNG's depth
  heatmapLayer?: "last" | "finer";
  signal?: AbortSignal;
}

export function predictUrl(options: PredictOptions = {}): string {
  const query = new URLSearchParams();
  query.set("heatmaps", options.heatmaps ?? "auto");
  query.set("images", String(options.images ?? true));
  if (options.depth && options.depth !== 8) query.set("depth", String(options.depth));
  if (options.heatmapLayer && options.heatmapLayer !== "last") {
    query.set("heatmap_layer", options.heatmapLayer);
  }
  return `/api/predict?${query.toString()}`;
}

export function predict(file: Blob, name: string, options: PredictOptions = {}, fetchFn: Fetch = fetch) {
  const form = new FormData();
  form.append("file", file, name);
  return call<Prediction>(
    predictUrl(options),
    { method: "POST", body: form, signal: options.signal },
    fetchFn,
  );
}

export function fetchModel(fetchFn: Fetch = fetch) {
  return call<ModelInfo>("/api/model", undefined, fetchFn);
}

/** 16 when the file keeps more than 8 bits a pixel (DICOM, 16-bit PNG), so the preview does. */
export async function previewDepth(file: Blob, name: string): Promise<8 | 16> {
  const head = new Uint8Array(await bytesOf(file.slice(0, 132)));
  if (/\.(dcm|dicom)$/i.test(name)) return 16;
  if (head.length >= 132 && String.fromCharCode(...head.slice(128, 132)) === "DICM") return 16;
  const png = head.length > 24 && head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e;
  return png && head[24] === 16 ? 16 : 8;
}

function bytesOf(blob: Blob): Promise<ArrayBuffer> {
  if (typeof blob.arrayBuffer === "function") return blob.arrayBuffer();
  return new Promise((resolve, reject) => {
    const reader = new FileReader(); // older engines (and jsdom) lack Blob.arrayBuffer
    reader.onload = () => resolve(reader.result as ArrayBuffer);
    reader.onerror = () => reject(reader.error);
    reader.readAsArrayBuffer(blob);
  });
}
