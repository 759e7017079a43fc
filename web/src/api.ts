// The API's JSON shapes (see /api/openapi.json) and the calls the page makes.

export interface Finding {
  finding: string;
  probability: number;
  threshold: number;
  positive: boolean;
}

export interface OodResult {
  checked: boolean;
  ok?: boolean;
  score?: number | null;
  threshold?: number | null;
  reason?: string;
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
    original?: string; // PNG data URL
    preprocessed?: string; // PNG data URL: what the model saw
  };
  heatmaps: Record<string, string>; // finding -> RGBA PNG data URL, display size
  ood: OodResult;
  seconds: number;
  timing: Record<string, number>;
  warnings?: string[];
  notice: string;
}

export interface MetricsSummary {
  n_images: number | null;
  mean_auroc: number | null;
  accuracy: number | null;
  per_finding: Record<
    string,
    { auroc: number | null; sensitivity: number | null; specificity: number | null }
  >;
}

export interface ModelInfo {
  name: string;
  arch: string;
  task: string;
  findings: string[];
  thresholds: Record<string, number>;
  image_size: number;
  training_data: { source?: string; path?: string; n_train?: number; n_val?: number };
  metrics: { validation: MetricsSummary | null; test: MetricsSummary | null };
  ood_gate?: { enabled: boolean; note: string };
  model_card: { intended_use: string; not_for: string; training_data: string; limitations: string };
  notice: string;
}

/** An error the page can show as it is: the server's message, or what went wrong getting it. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

type Fetch = typeof fetch;

async function call<T>(url: string, init: RequestInit | undefined, fetchFn: Fetch): Promise<T> {
  let response: Response;
  try {
    response = await fetchFn(url, init);
  } catch {
    throw new ApiError(
      "Cannot reach the cxr server. Is `cxr serve` still running? Check the terminal it runs in.",
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
      throw new ApiError(err.error, response.status, err.code ?? "error");
    }
    throw new ApiError(
      `The server answered ${response.status} ${response.statusText || ""}`.trim() +
        " without an explanation. Try again; if it persists, check the server log.",
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
}

export function predictUrl(options: PredictOptions = {}): string {
  const query = new URLSearchParams();
  query.set("heatmaps", options.heatmaps ?? "auto");
  query.set("images", String(options.images ?? true));
  return `/api/predict?${query.toString()}`;
}

export function predict(file: File, options: PredictOptions = {}, fetchFn: Fetch = fetch) {
  const form = new FormData();
  form.append("file", file, file.name);
  return call<Prediction>(predictUrl(options), { method: "POST", body: form }, fetchFn);
}

export function fetchModel(fetchFn: Fetch = fetch) {
  return call<ModelInfo>("/api/model", undefined, fetchFn);
}
