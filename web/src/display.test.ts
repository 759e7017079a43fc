import { encode } from "fast-png";
import { describe, expect, it, vi } from "vitest";
import { loadGrey } from "./display";
import { prediction } from "./fixtures";
import { distinctLevels } from "./windowing";

function png16(): Uint8Array {
  const data = new Uint16Array(64 * 64).map((_, i) => i * 16); // 4096 levels
  return encode({ width: 64, height: 64, data, depth: 16, channels: 1 });
}

const display = (url: string) => ({ url, expires_s: 600, depth: 16 as const, width: 64, height: 64, bytes: 1 });

describe("loadGrey", () => {
  it("fetches the display image and keeps its 16 bits", async () => {
    const fetchFn = vi.fn().mockResolvedValue(new Response(png16().slice().buffer as ArrayBuffer, { headers: { "Content-Type": "image/png" } }));
    const image = { ...prediction().image, display: display("/api/display/abc") };
    const loaded = await loadGrey(image, fetchFn);
    expect(fetchFn).toHaveBeenCalledWith("/api/display/abc");
    expect(loaded.source).toBe("display");
    expect(loaded.grey?.maxValue).toBe(65535);
    expect(distinctLevels(loaded.grey!)).toBe(4096);
    expect(loaded.note).toBeUndefined();
    // a second look at the same result does not fetch it again
    await loadGrey(image, fetchFn);
    expect(fetchFn).toHaveBeenCalledTimes(1);
  });

  it("falls back to the inline preview, and says why, when the server no longer holds it", async () => {
    const gone = new Response(JSON.stringify({ error: "expired", code: "display_expired", status: 404 }), { status: 404 });
    const fetchFn = vi.fn().mockResolvedValue(gone);
    const image = { ...prediction().image, display: display("/api/display/old") };
    const loaded = await loadGrey(image, fetchFn);
    expect(loaded.source).toBe("preview"); // the fixture's inline 1-pixel PNG
    expect(loaded.grey?.maxValue).toBe(255);
    expect(loaded.note).toMatch(/no longer on the server.*10 min.*8-bit preview/);
  });

  it("has nothing to window when neither is there", async () => {
    const image = { ...prediction().image, original: null, display: null };
    expect(await loadGrey(image, vi.fn())).toEqual({ grey: null, source: "none", note: undefined });
  });
});
