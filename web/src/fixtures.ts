// Shapes as the API sends them (see tests/test_serve.py for the real thing), for unit tests.
import type { ModelInfo, Prediction } from "./api";

const PIXEL =
  "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==";

export function prediction(overrides: Partial<Prediction> = {}): Prediction {
  return {
    file: "chest.png",
    findings: [
      { finding: "PNEUMONIA", probability: 0.83, threshold: 0.55, positive: true },
      { finding: "NORMAL", probability: 0.17, threshold: 0.45, positive: false },
    ],
    top_finding: "PNEUMONIA",
    image: {
      width: 224,
      height: 224,
      display_width: 224,
      display_height: 224,
      original: PIXEL,
      preprocessed: PIXEL,
    },
    heatmaps: { PNEUMONIA: PIXEL },
    ood: { checked: false, reason: "none in this run" },
    seconds: 0.042,
    timing: { total: 0.042 },
    warnings: [],
    notice: "Research software: not a medical device.",
    ...overrides,
  };
}

export const modelInfo: ModelInfo = {
  name: "run",
  version: "0.1.0",
  arch: "resnet18",
  task: "multiclass",
  findings: ["NORMAL", "PNEUMONIA"],
  thresholds: { NORMAL: 0.45, PNEUMONIA: 0.55 },
  image_size: 48,
  preprocess: { image_size: 48, clahe: true },
  training_data: { source: "kermany/train", n_train: 85, n_val: 15 },
  metrics: {
    validation: {
      n_images: 15,
      mean_auroc: 0.861,
      accuracy: 0.93,
      per_finding: {
        NORMAL: { auroc: 0.861, sensitivity: 0.67, specificity: 1 },
        PNEUMONIA: { auroc: 0.861, sensitivity: 1, specificity: 0.67 },
      },
    },
    test: null,
  },
  ood_gate: { enabled: false, note: "none in this run" },
  model_card: {
    intended_use: "Research and teaching.",
    not_for: "Diagnosis, triage, screening or any treatment decision.",
    training_data: "Trained on 85 images.",
    limitations: "Unknown accuracy elsewhere.",
  },
  notice: "Research software: not a medical device.",
};

export function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}
