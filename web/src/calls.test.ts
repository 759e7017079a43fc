import { describe, expect, it } from "vitest";
import {
  countCalls,
  countsText,
  findingLabel,
  humanName,
  marginText,
  middleTruncate,
  percent,
  percentPair,
} from "./calls";

describe("percent", () => {
  it("keeps one decimal and never rounds to a false 100% or 0%", () => {
    expect(percent(0.718)).toBe("71.8%");
    expect(percent(0.9997)).toBe(">99.9%");
    expect(percent(0.0001)).toBe("<0.1%");
    expect(percent(1)).toBe("100%");
    expect(percent(0)).toBe("0%");
  });
});

describe("percentPair and marginText", () => {
  it("never prints a probability and its threshold the same when they differ", () => {
    expect(percentPair(0.5581, 0.5579)).toEqual(["55.81%", "55.79%"]);
    expect(percentPair(0.55801, 0.55799)).toEqual(["55.801%", "55.799%"]);
    expect(percentPair(0.71, 0.4)).toEqual(["71.0%", "40.0%"]);
    // never a false 100% or 0% for a value strictly between
    expect(percentPair(0.99996, 0.999)).toEqual(["99.996%", "99.9%"]);
    expect(percentPair(0.00004, 0.001)).toEqual(["0.004%", "0.1%"]);
    expect(marginText(0.5581, 0.5579)).toBe("+0.02 pts over");
    expect(marginText(0.5579, 0.5581)).toBe("−0.02 pts under");
    expect(marginText(0.71, 0.4)).toBe("+31.0 pts over");
    expect(marginText(0.4, 0.4)).toBe("at the threshold");
  });
});

describe("names and labels", () => {
  it("makes finding names human", () => {
    expect(humanName("Pleural_Thickening")).toBe("Pleural thickening");
    expect(humanName("PNEUMONIA")).toBe("Pneumonia");
    expect(humanName("No Finding")).toBe("No finding");
  });

  it("reads a finding as a sentence, not raw floats", () => {
    const f = { finding: "Emphysema", probability: 0.852, threshold: 0.387, positive: true, call: "positive" as const };
    expect(findingLabel(f)).toBe("Emphysema 85.2%, threshold 38.7%, positive");
    expect(findingLabel({ ...f, call: "possible", reliable: false })).toBe(
      "Emphysema 85.2%, threshold 38.7%, possible (borderline), unreliable finding",
    );
  });

  it("truncates long file names in the middle, keeping the end", () => {
    expect(middleTruncate("short.png")).toBe("short.png");
    const cut = middleTruncate("nih_00027426_000_and_more_words.png", 20);
    expect(cut).toHaveLength(20);
    expect(cut.startsWith("nih_0002")).toBe(true);
    expect(cut.endsWith("words.png")).toBe(true);
  });
});

describe("countCalls", () => {
  const findings = [
    { finding: "A", probability: 0.9, threshold: 0.5, positive: true, call: "positive" as const, reliable: true },
    { finding: "B", probability: 0.6, threshold: 0.5, positive: true, call: "possible" as const, reliable: true },
    { finding: "C", probability: 0.9, threshold: 0.5, positive: true, call: "positive" as const, reliable: false },
  ];
  it("leaves unreliable findings out of the counts unless asked", () => {
    expect(countCalls(findings)).toEqual({ positive: 1, possible: 1, unreliable: 1 });
    expect(countCalls(findings, true)).toEqual({ positive: 2, possible: 1, unreliable: 1 });
    expect(countsText(countCalls(findings))).toBe("1 positive, 1 possible, 1 unreliable finding not counted");
  });
});
