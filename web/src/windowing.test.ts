import { encode } from "fast-png";
import { describe, expect, it } from "vitest";
import { applyWindow, decodeGrey, distinctLevels, dragWindow, FULL_WINDOW, presetWindow, type GreyImage } from "./windowing";

function dataUrl(width: number, height: number, data: Uint16Array | Uint8Array, depth: 8 | 16): string {
  const png = encode({ width, height, data, depth, channels: 1 });
  let s = "";
  for (const b of png) s += String.fromCharCode(b);
  return `data:image/png;base64,${btoa(s)}`;
}

describe("decodeGrey", () => {
  it("keeps a 16-bit PNG's levels (a canvas would cut them to 256)", () => {
    const data = new Uint16Array(64 * 64).map((_, i) => i * 16);
    const img = decodeGrey(dataUrl(64, 64, data, 16));
    expect(img.maxValue).toBe(65535);
    expect(distinctLevels(img)).toBe(4096);
    expect(img.data[100]).toBe(1600);
  });
});

describe("applyWindow", () => {
  const img: GreyImage = { width: 4, height: 1, data: new Uint16Array([0, 16384, 32768, 65535]), maxValue: 65535 };
  const grey = (rgba: Uint8ClampedArray) => [0, 4, 8, 12].map((i) => rgba[i]);

  it("maps the full range linearly and a narrow window steeply", () => {
    expect(grey(applyWindow(img, FULL_WINDOW))).toEqual([0, 64, 128, 255]);
    // a window over the lower half: 16384 becomes mid-grey, everything above it white
    expect(grey(applyWindow(img, { center: 0.25, width: 0.5, invert: false }))).toEqual([0, 128, 255, 255]);
    expect(grey(applyWindow(img, { ...FULL_WINDOW, invert: true }))).toEqual([255, 191, 127, 0]);
  });

  it("separates levels that 8 bits would merge", () => {
    const close: GreyImage = { width: 2, height: 1, data: new Uint16Array([30000, 30100]), maxValue: 65535 };
    const w = { center: 30050 / 65535, width: 200 / 65535, invert: false };
    const [a, b] = grey(applyWindow(close, w));
    expect(b - a).toBeGreaterThan(100);
  });
});

describe("presets and dragging", () => {
  const ramp: GreyImage = {
    width: 1000,
    height: 1,
    data: new Uint16Array(1000).map((_, i) => Math.round((i / 999) * 65535)),
    maxValue: 65535,
  };
  it("puts the lung window on the dark part and bone on the bright tail", () => {
    const lung = presetWindow(ramp, "lung");
    const bone = presetWindow(ramp, "bone");
    expect(lung.center).toBeLessThan(0.4);
    expect(bone.center).toBeGreaterThan(0.8);
    expect(bone.width).toBeLessThan(lung.width);
  });
  it("widens the window dragging right and raises the level dragging down", () => {
    const w = dragWindow(FULL_WINDOW, 100, 0, 400);
    expect(w.width).toBeGreaterThan(1);
    expect(dragWindow(FULL_WINDOW, 0, 50, 400).center).toBeGreaterThan(0.5);
  });
});
