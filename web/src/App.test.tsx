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
    expect(mount.container.textContent).not.toContain("kermany/train/"); // no server paths
  });

  it("uploads several files in turn, shows findings and heatmap, and errors in plain words", async () => {
    const fetchFn = stubServer();
    await act(async () => mount.root.render(<App />));
    await choose("a.png", "notes.txt");
    const predicts = fetchFn.mock.calls.filter(([url]) => String(url).startsWith("/api/predict"));
    expect(predicts).toHaveLength(2);
    const rows = mount.container.querySelectorAll<HTMLButtonElement>(".result-rows .row-main");
    expect(rows).toHaveLength(2);
    expect(rows[0].textContent).toContain("Pneumonia 83.0%");
    expect(rows[1].textContent).toContain("could not be read as an X-ray image");
    // the first file's result: bars, its top finding's heatmap, the no-gate banner
    expect(mount.container.querySelectorAll(".finding")).toHaveLength(2);
    expect(mount.container.querySelector("[data-testid=heatmap]")).not.toBeNull();
    expect(mount.container.querySelector("[data-testid=map-caption]")!.textContent).toContain(
      "Grad-CAM for Pneumonia",
    );
    expect(mount.container.querySelector("[data-testid=no-gate-banner]")!.textContent).toContain(
      "Input checks are off for this model",
    );
    expect(mount.container.querySelector("[data-testid=announcer]")!.textContent).toContain("notes.txt");
    // selecting the failed file shows a plain message, the server's words as details, a Retry
    await act(async () => rows[1].click());
    expect(mount.container.querySelector("[role=alert]")!.textContent).toMatch(/^This file could not be read/);
    expect(mount.container.querySelector(".error-detail")!.textContent).toContain("notes.txt: not a readable image");
    const retry = [...mount.container.querySelectorAll("button")].find((b) => b.textContent === "Retry")!;
    await act(async () => retry.click());
    await settle();
    expect(fetchFn.mock.calls.filter(([url]) => String(url).startsWith("/api/predict"))).toHaveLength(3);
  });

  it("J and K move between images; a removed file leaves the list", async () => {
    stubServer();
    await act(async () => mount.root.render(<App />));
    await choose("a.png", "b.png");
    const title = () => mount.container.querySelector("#result-title")!.textContent;
    expect(title()).toBe("a.png");
    await act(async () => document.dispatchEvent(new KeyboardEvent("keydown", { key: "j", bubbles: true })));
    expect(title()).toBe("b.png");
    await act(async () => document.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowLeft", bubbles: true })));
    expect(title()).toBe("a.png");
    const remove = mount.container.querySelector<HTMLButtonElement>("[aria-label='Remove b.png']")!;
    await act(async () => remove.click());
    expect(mount.container.querySelectorAll(".result-rows li")).toHaveLength(1);
  });

  it("fetches a finding's heatmap on demand and moves its opacity", async () => {
    const fetchFn = stubServer();
    await act(async () => mount.root.render(<App />));
    await choose("a.png");
    const normal = [...mount.container.querySelectorAll<HTMLButtonElement>(".finding")].find((b) =>
      b.textContent!.includes("Normal"),
    )!;
    await act(async () => normal.click());
    await settle();
    const last = String(fetchFn.mock.calls.at(-1)![0]);
    expect(last).toBe("/api/predict?heatmaps=NORMAL&images=false");
    expect(mount.container.querySelector("[data-testid=map-caption]")!.textContent).toContain("Grad-CAM for Normal");
    const heat = mount.container.querySelector<HTMLImageElement>("[data-testid=heatmap]")!;
    const slider = mount.container.querySelector<HTMLInputElement>(".opacity input")!;
    expect(slider.getAttribute("aria-valuetext")).toBe("opacity 50%");
    await act(async () => {
      const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value")!.set!;
      setter.call(slider, "0.9");
      slider.dispatchEvent(new Event("input", { bubbles: true }));
    });
    expect(heat.style.opacity).toBe("0.9");
  });

  it("cancels an analysis in flight and offers to retry it", async () => {
    const fetchFn = vi.fn(async (url: string, init?: RequestInit) => {
      if (url === "/api/model") return jsonResponse(modelInfo);
      return new Promise<Response>((_, reject) =>
        init?.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))),
      );
    });
    vi.stubGlobal("fetch", fetchFn);
    await act(async () => mount.root.render(<App />));
    await choose("slow.png");
    expect(mount.container.querySelector("[aria-busy=true]")!.textContent).toContain("Analysing");
    const cancel = [...mount.container.querySelectorAll("button")].find((b) => b.textContent === "Cancel")!;
    await act(async () => cancel.click());
    await settle();
    expect(mount.container.querySelector("[role=alert]")!.textContent).toBe("Cancelled.");
    expect(mount.container.querySelector("[aria-label='Retry slow.png']")).not.toBeNull();
  });
});
