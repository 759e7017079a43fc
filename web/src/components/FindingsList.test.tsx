import { act } from "react";
import { describe, expect, it, vi } from "vitest";
import { FindingsList, percent } from "./FindingsList";
import { useMountPoint } from "../test-mount";

const mount = useMountPoint();

const findings = [
  { finding: "Effusion", probability: 0.12, threshold: 0.3, positive: false },
  { finding: "Cardiomegaly", probability: 0.71, threshold: 0.4, positive: true },
  { finding: "Nodule", probability: 0.35, threshold: 0.2, positive: true },
];

describe("FindingsList", () => {
  it("lists findings highest first with the threshold marked and the call shown", () => {
    act(() => mount.root.render(<FindingsList findings={findings} selected={null} onSelect={() => {}} />));
    const names = [...mount.container.querySelectorAll(".finding-name")].map((n) => n.textContent);
    expect(names).toEqual(["Cardiomegaly", "Nodule", "Effusion"]);
    const fills = [...mount.container.querySelectorAll<HTMLElement>(".fill")].map((f) => f.style.width);
    expect(fills).toEqual(["71%", "35%", "12%"]);
    const ticks = [...mount.container.querySelectorAll<HTMLElement>(".threshold")].map((t) => t.style.left);
    expect(ticks).toEqual(["40%", "20%", "30%"]);
    const pcts = [...mount.container.querySelectorAll(".finding-pct")].map((c) => c.textContent);
    expect(pcts).toEqual(["71.0%thr 40.0%", "35.0%thr 20.0%", "12.0%thr 30.0%"]);
    const calls = [...mount.container.querySelectorAll(".call")].map((c) => c.textContent);
    expect(calls).toEqual(["Positive", "Positive", "Negative"]);
  });

  it("reports the clicked finding and marks the selected one", () => {
    const onSelect = vi.fn();
    act(() => mount.root.render(<FindingsList findings={findings} selected="Nodule" onSelect={onSelect} />));
    const buttons = mount.container.querySelectorAll("button");
    expect(buttons[1].getAttribute("aria-pressed")).toBe("true");
    expect(buttons[0].getAttribute("aria-pressed")).toBe("false");
    act(() => buttons[2].click());
    expect(onSelect).toHaveBeenCalledWith("Effusion");
  });
});

describe("percent", () => {
  it("keeps one decimal and never rounds to a false 100% or 0%", () => {
    expect(percent(0.718)).toBe("71.8%");
    expect(percent(0.9997)).toBe(">99.9%");
    expect(percent(0.0001)).toBe("<0.1%");
    expect(percent(1)).toBe("100%");
    expect(percent(0)).toBe("0%");
  });
});
