import { act } from "react";
import { describe, expect, it } from "vitest";
import { modelInfo } from "../fixtures";
import { useMountPoint } from "../test-mount";
import { ModelInfo } from "./ModelInfo";

const mount = useMountPoint();

function rows(): string[][] {
  return [...mount.container.querySelectorAll("tbody tr")].map((tr) =>
    [...tr.querySelectorAll("th, td")].map((c) => c.textContent ?? ""),
  );
}

describe("ModelInfo", () => {
  it("shows positives per finding and the validation intervals", () => {
    const info = structuredClone(modelInfo);
    info.metrics.validation!.intervals = { method: "patient bootstrap", n_boot: 300, level: 0.95 };
    info.metrics.validation!.per_finding.NORMAL = {
      auroc: 0.861,
      auroc_ci: [0.7123, 0.9634],
      sensitivity: 0.67,
      sensitivity_ci: [0.2, 1],
      specificity: 1,
      specificity_ci: null, // not estimable in every resample: the value alone
      n_positive: 3,
      n_negative: 12,
    };
    act(() => mount.root.render(<ModelInfo info={info} error={null} />));
    const caption = mount.container.querySelector("[data-testid=metrics-caption]")!.textContent;
    expect(caption).toContain("95% intervals from 300 patient bootstrap resamples");
    const normal = rows().find((r) => r[0].startsWith("Normal"))!;
    expect(normal.slice(1, 5)).toEqual(["3 of 15", "0.861 (0.712–0.963)", "0.67 (0.20–1.00)", "1.00"]);
  });

  it("says intervals were not computed for a run trained before them", () => {
    act(() => mount.root.render(<ModelInfo info={modelInfo} error={null} />));
    const caption = mount.container.querySelector("[data-testid=metrics-caption]")!.textContent;
    expect(caption).toContain("confidence intervals: not computed");
    const normal = rows().find((r) => r[0].startsWith("Normal"))!;
    expect(normal[2]).toBe("0.861");
    expect(mount.container.textContent).not.toMatch(/\/(tmp|home|work)\//);
  });
});
