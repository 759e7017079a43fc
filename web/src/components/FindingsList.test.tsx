import { act } from "react";
import { describe, expect, it, vi } from "vitest";
import type { Finding } from "../api";
import { FindingsList } from "./FindingsList";
import { useMountPoint } from "../test-mount";

const mount = useMountPoint();

/** Text a sighted reader sees: screen-reader-only spans left out. */
function visible(el: Element): string {
  const copy = el.cloneNode(true) as Element;
  copy.querySelectorAll(".sr-only").forEach((e) => e.remove());
  return copy.textContent ?? "";
}

/** Text a screen reader reads: aria-hidden parts left out, spaces as a browser joins spans. */
function spokenText(el: Element): string {
  const copy = el.cloneNode(true) as Element;
  copy.querySelectorAll("[aria-hidden=true]").forEach((e) => e.remove());
  // a browser puts a space between grid items and around blocks (the button is a grid)
  copy.querySelectorAll("span, small").forEach((e) => e.append(" "));
  return (copy.textContent ?? "").replace(/\s+/g, " ").replace(/ ,/g, ",").replace(/ \)/g, ")").trim();
}

const findings: Finding[] = [
  { finding: "Effusion", probability: 0.12, threshold: 0.3, positive: false, call: "negative", band: [0.2, 0.4], reliable: true, auroc: 0.8 },
  { finding: "Cardiomegaly", probability: 0.71, threshold: 0.4, positive: true, call: "positive", band: [0.3, 0.6], reliable: true, auroc: 0.9 },
  { finding: "Pleural_Thickening", probability: 0.5581, threshold: 0.5579, positive: true, call: "possible", band: [0.45, 0.7], reliable: false, auroc: 0.48 },
];

describe("FindingsList", () => {
  it("lists findings highest first with threshold, band, margin and a three-way call", () => {
    act(() => mount.root.render(<FindingsList findings={findings} selected={null} onSelect={() => {}} />));
    const names = [...mount.container.querySelectorAll(".finding-name")].map((n) => n.textContent);
    expect(names).toEqual(["Cardiomegaly", "Pleural thickening", "Effusion"]);
    const fills = [...mount.container.querySelectorAll<HTMLElement>(".fill")].map((f) => f.style.width);
    expect(fills).toEqual(["71%", "55.81%", "12%"]);
    const bands = [...mount.container.querySelectorAll<HTMLElement>(".band")].map((b) => [b.style.left, b.style.width]);
    expect(bands[0]).toEqual(["30%", "30%"]);
    const pcts = [...mount.container.querySelectorAll(".finding-pct")].map((c) => visible(c));
    // rounding never hides the side: 55.81% over 55.79%
    expect(pcts[1]).toBe("55.81%thr 55.79% · +0.02 pts over");
    const calls = [...mount.container.querySelectorAll(".call")].map((c) => visible(c));
    expect(calls).toEqual(["Positive", "Possible", "Negative"]);
    const unreliable = mount.container.querySelectorAll("li.unreliable");
    expect(unreliable).toHaveLength(1);
    expect(unreliable[0].textContent).toContain("unreliable: AUROC 0.48");
    // what a screen reader says: the text without the parts hidden from it
    const spoken = [...mount.container.querySelectorAll("button")].map((b) => spokenText(b));
    expect(spoken[0]).toBe("Cardiomegaly 71.0%, threshold 40.0%, Positive");
    expect(spoken[1]).toBe(
      "Pleural thickening 55.81%, threshold 55.79%, Possible (borderline), unreliable: AUROC 0.48",
    );
  });

  it("reports the clicked finding, marks the selected one, and moves with the arrow keys", () => {
    const onSelect = vi.fn();
    act(() => mount.root.render(<FindingsList findings={findings} selected="Pleural_Thickening" onSelect={onSelect} />));
    const buttons = mount.container.querySelectorAll("button");
    expect(buttons[1].getAttribute("aria-pressed")).toBe("true");
    expect(buttons[0].getAttribute("aria-pressed")).toBe("false");
    expect([...buttons].map((b) => b.tabIndex)).toEqual([-1, 0, -1]); // one tab stop
    act(() => buttons[2].click());
    expect(onSelect).toHaveBeenCalledWith("Effusion");
    act(() => {
      buttons[1].dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowUp", bubbles: true }));
    });
    expect(onSelect).toHaveBeenLastCalledWith("Cardiomegaly");
    expect(document.activeElement).toBe(buttons[0]);
  });
});
