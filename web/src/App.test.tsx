import { act } from "react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { App } from "./App";
import { jsonResponse, modelInfo, prediction } from "./fixtures";
import { useMountPoint } from "./test-mount";

const mount = useMountPoint();

afterEach(() => {
  vi.unstubAllGlobals();
});

/** A fake server: /api/model, and /api/predict answering by file name. */
function stubServer() {
  const fetchFn = vi.fn(async (url: string, init?: RequestInit) => {
    if (url === "/api/model") return jsonResponse(modelInfo);
    const file = (init?.body as FormData).get("file") as File;
    if (file.name.endsWith(".txt")) {
      return jsonResponse(
        { error: `${file.name}: not a readable image`, code: "unreadable_image", status: 422 },
        422,
      );
    }
    const heatmaps = url.includes("heatmaps=NORMAL")
      ? { NORMAL: "data:image/png;base64,AAAA" }
      : prediction().heatmaps;
    return jsonResponse(prediction({ file: file.name, heatmaps }));
  });
  vi.stubGlobal("fetch", fetchFn);
  return fetchFn;
}

async function settle() {
  for (let i = 0; i < 5; i++) await act(async () => await new Promise((r) => setTimeout(r, 0)));
}

async function choose(...names: string[]) {
  const input = mount.container.querySelector<HTMLInputElement>("#file-input")!;
  const files = names.map((n) => new File(["x"], n));
  Object.defineProperty(input, "files", { value: files, configurable: true });
  await act(async () => input.dispatchEvent(new Event("change", { bubbles: true })));
  await settle();
}

describe("App", () => {
  it("shows the not-a-medical-device notice and the model card", async () => {
    stubServer();
    await act(async () => mount.root.render(<App />));
    await settle();
    expect(mount.container.querySelector("[role=note]")!.textContent).toContain("Not a medical device");
    expect(mount.container.textContent).toContain("Diagnosis, triage, screening");
    expect(mount.container.textContent).toContain("mean AUROC 0.861");
  });

  it("uploads several files in turn, shows findings and heatmap, and errors from the API", async () => {
    const fetchFn = stubServer();
    await act(async () => mount.root.render(<App />));
    await choose("a.png", "notes.txt");
    const predicts = fetchFn.mock.calls.filter(([url]) => String(url).startsWith("/api/predict"));
    expect(predicts).toHaveLength(2);
    const rows = mount.container.querySelectorAll(".results tbody tr");
    expect(rows).toHaveLength(2);
    expect(rows[0].textContent).toContain("PNEUMONIA 83.0%");
    expect(rows[1].textContent).toContain("notes.txt: not a readable image");
    // the first file's result: bars and its top finding's heatmap
    expect(mount.container.querySelectorAll(".finding")).toHaveLength(2);
    const heat = mount.container.querySelector<HTMLImageElement>("[data-testid=heatmap]")!;
    expect(heat.alt).toBe("Grad-CAM heatmap for PNEUMONIA");
    // selecting the failed file shows its message as an alert
    await act(async () => (rows[1] as HTMLElement).click());
    expect(mount.container.querySelector("[role=alert]")!.textContent).toBe(
      "notes.txt: not a readable image",
    );
  });

  it("fetches a finding's heatmap on demand and moves its opacity", async () => {
    const fetchFn = stubServer();
    await act(async () => mount.root.render(<App />));
    await choose("a.png");
    const normal = [...mount.container.querySelectorAll<HTMLButtonElement>(".finding")].find((b) =>
      b.textContent!.includes("NORMAL"),
    )!;
    await act(async () => normal.click());
    await settle();
    const last = String(fetchFn.mock.calls.at(-1)![0]);
    expect(last).toBe("/api/predict?heatmaps=NORMAL&images=false");
    const heat = mount.container.querySelector<HTMLImageElement>("[data-testid=heatmap]")!;
    expect(heat.alt).toBe("Grad-CAM heatmap for NORMAL");
    const slider = mount.container.querySelector<HTMLInputElement>(".opacity input")!;
    await act(async () => {
      const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value")!.set!;
      setter.call(slider, "0.9");
      slider.dispatchEvent(new Event("input", { bubbles: true }));
    });
    expect(heat.style.opacity).toBe("0.9");
  });
});
