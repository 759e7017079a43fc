// Window/level on the preview's own bit depth: the server sends a 16-bit PNG for DICOM and
// 16-bit PNG uploads, decoded here with fast-png (a canvas would cut it to 8 bits first).
import { decode } from "fast-png";

export interface GreyImage {
  width: number;
  height: number;
  data: Uint8Array | Uint16Array; // one grey value per pixel
  maxValue: number; // 255 or 65535
}

/** Centre and width as fractions of the full range (0..1), so presets suit any depth. */
export interface Window {
  center: number;
  width: number;
  invert: boolean;
}

export const FULL_WINDOW: Window = { center: 0.5, width: 1, invert: false };

export function dataUrlBytes(url: string): Uint8Array {
  const b64 = url.slice(url.indexOf(",") + 1);
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** A grey (or grey+alpha, RGB) PNG data URL -> one grey value per pixel at the PNG's depth. */
export function decodeGrey(url: string): GreyImage {
  return decodeGreyPng(dataUrlBytes(url));
}

/** PNG bytes (e.g. the server's display image) -> one grey value per pixel at the PNG's depth. */
export function decodeGreyPng(bytes: Uint8Array): GreyImage {
  const png = decode(bytes);
  const channels = png.channels;
  const n = png.width * png.height;
  const src = png.data as Uint8Array | Uint16Array;
  const data = png.depth === 16 ? new Uint16Array(n) : new Uint8Array(n);
  if (channels === 1) data.set(src.subarray(0, n));
  else for (let i = 0; i < n; i++) data[i] = src[i * channels];
  return { width: png.width, height: png.height, data, maxValue: png.depth === 16 ? 65535 : 255 };
}

/** RGBA pixels of the image through the window: linear ramp from center-width/2 to +width/2. */
export function applyWindow(img: GreyImage, w: Window, out?: Uint8ClampedArray): Uint8ClampedArray {
  const n = img.width * img.height;
  const rgba = out ?? new Uint8ClampedArray(n * 4);
  const lo = (w.center - w.width / 2) * img.maxValue;
  const scale = 255 / Math.max(w.width * img.maxValue, 1e-9);
  // a lookup table over every stored level: 64 K entries at most, cheaper than per-pixel math
  const lut = new Uint8ClampedArray(img.maxValue + 1);
  for (let v = 0; v <= img.maxValue; v++) {
    const g = (v - lo) * scale;
    lut[v] = w.invert ? 255 - g : g;
  }
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const g = lut[img.data[i]];
    rgba[j] = g;
    rgba[j + 1] = g;
    rgba[j + 2] = g;
    rgba[j + 3] = 255;
  }
  return rgba;
}

/** The value at quantile q (0..1) of the image's grey levels, as a fraction of the range. */
export function quantile(img: GreyImage, q: number): number {
  const hist = new Uint32Array(img.maxValue + 1);
  for (let i = 0; i < img.data.length; i++) hist[img.data[i]]++;
  const target = q * img.data.length;
  let seen = 0;
  for (let v = 0; v < hist.length; v++) {
    seen += hist[v];
    if (seen >= target) return v / img.maxValue;
  }
  return 1;
}

/** Presets from the image's own histogram (a radiograph has no Hounsfield scale): the lungs
 * are the dark part, the mediastinum the middle-to-bright part, bone the brightest tail. */
export const PRESETS: Record<string, { label: string; from: number; to: number }> = {
  lung: { label: "Lung", from: 0.01, to: 0.6 },
  mediastinum: { label: "Mediastinum", from: 0.35, to: 0.98 },
  bone: { label: "Bone", from: 0.7, to: 0.998 },
};

export function presetWindow(img: GreyImage, name: keyof typeof PRESETS, invert = false): Window {
  const { from, to } = PRESETS[name];
  const lo = quantile(img, from);
  const hi = Math.max(quantile(img, to), lo + 1 / img.maxValue);
  return { center: (lo + hi) / 2, width: hi - lo, invert };
}

/** Dragging: right widens the window, down raises the level (the usual radiology mapping). */
export function dragWindow(w: Window, dx: number, dy: number, span: number): Window {
  const width = Math.min(2, Math.max(1 / 4096, w.width * Math.exp(dx / span)));
  const center = Math.min(1.5, Math.max(-0.5, w.center + (dy / span) * w.width));
  return { ...w, center, width };
}

/** The number of distinct grey levels: a quick check that the depth survived the trip. */
export function distinctLevels(img: GreyImage): number {
  return new Set(img.data).size;
}
