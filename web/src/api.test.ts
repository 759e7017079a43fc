import { describe, expect, it, vi } from "vitest";
import { ApiError, fetchModel, predict, predictUrl, previewDepth } from "./api";
import { jsonResponse, modelInfo, prediction } from "./fixtures";

const file = () => new File([new Uint8Array([137, 80, 78, 71])], "chest.png", { type: "image/png" });

describe("predict", () => {
  it("posts the file as multipart form data with the heatmap choice", async () => {
    const fetchFn = vi.fn().mockResolvedValue(jsonResponse(prediction()));
    const result = await predict(file(), "chest.png", { heatmaps: "NORMAL", images: false }, fetchFn);
    expect(result.top_finding).toBe("PNEUMONIA");
    const [url, init] = fetchFn.mock.calls[0];
    expect(url).toBe("/api/predict?heatmaps=NORMAL&images=false");
    expect(init.method).toBe("POST");
    const sent = (init.body as FormData).get("file") as File;
    expect(sent.name).toBe("chest.png");
  });

  it("defaults to automatic heatmaps and preview images", () => {
    expect(predictUrl()).toBe("/api/predict?heatmaps=auto&images=true");
    expect(predictUrl({ depth: 16, heatmapLayer: "finer" })).toBe(
      "/api/predict?heatmaps=auto&images=true&depth=16&heatmap_layer=finer",
    );
  });

  it("asks for a 16-bit preview only for DICOM and 16-bit PNG files", async () => {
    const png = (depth: number) => {
      const b = new Uint8Array(33);
      b.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
      b[24] = depth;
      return new Blob([b]);
    };
    expect(await previewDepth(png(8), "a.png")).toBe(8);
    expect(await previewDepth(png(16), "a.png")).toBe(16);
    const dicom = new Uint8Array(200);
    dicom.set([68, 73, 67, 77], 128);
    expect(await previewDepth(new Blob([dicom]), "no-extension")).toBe(16);
    expect(await previewDepth(new Blob([new Uint8Array(10)]), "x.dcm")).toBe(16);
  });

  it("turns the API's JSON error into the message a person reads", async () => {
    const body = { error: "notes.txt: not a readable image", code: "unreadable_image", status: 422 };
    const fetchFn = vi.fn().mockResolvedValue(jsonResponse(body, 422));
    const err = await predict(file(), "chest.png", {}, fetchFn).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    // a plain sentence first; the server's own words are kept as the detail
    expect(err.message).toMatch(/^This file could not be read as an X-ray image/);
    expect(err.detail).toBe("notes.txt: not a readable image");
    expect(err.status).toBe(422);
    expect(err.code).toBe("unreadable_image");
  });

  it("explains a non-JSON failure (a proxy's 502 page, say)", async () => {
    const fetchFn = vi
      .fn()
      .mockResolvedValue(new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }));
    const err = await predict(file(), "chest.png", {}, fetchFn).catch((e) => e);
    expect(err.message).toMatch(/^The server answered 502 Bad Gateway without an explanation/);
  });

  it("says when the server cannot be reached", async () => {
    const fetchFn = vi.fn().mockRejectedValue(new TypeError("Failed to fetch"));
    const err = await predict(file(), "chest.png", {}, fetchFn).catch((e) => e);
    expect(err.code).toBe("network");
    expect(err.message).toContain("did not answer");
    expect(err.message).not.toContain("terminal");
  });
});

describe("fetchModel", () => {
  it("reads /api/model", async () => {
    const fetchFn = vi.fn().mockResolvedValue(jsonResponse(modelInfo));
    expect((await fetchModel(fetchFn)).findings).toEqual(["NORMAL", "PNEUMONIA"]);
    expect(fetchFn.mock.calls[0][0]).toBe("/api/model");
  });
});
