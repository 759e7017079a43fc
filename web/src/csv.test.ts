import { describe, expect, it } from "vitest";
import { csvCell, toCsv } from "./csv";
import { prediction } from "./fixtures";

describe("csvCell", () => {
  it("quotes commas, quotes and newlines", () => {
    expect(csvCell("plain")).toBe("plain");
    expect(csvCell("a,b")).toBe('"a,b"');
    expect(csvCell('say "hi"')).toBe('"say ""hi"""');
    expect(csvCell("two\nlines")).toBe('"two\nlines"');
    expect(csvCell(undefined)).toBe("");
    expect(csvCell(0)).toBe("0");
  });

  it("defuses spreadsheet formulas in file names", () => {
    expect(csvCell("=HYPERLINK(1)")).toBe("'=HYPERLINK(1)");
    expect(csvCell("@cmd")).toBe("'@cmd");
    expect(csvCell("+1,2")).toBe("\"'+1,2\"");
  });
});

describe("toCsv", () => {
  it("writes one row per file: each finding's probability, threshold, band and call, the model", () => {
    const result = prediction();
    result.findings[0] = { ...result.findings[0], call: "possible", band: [0.5, 0.9], reliable: false };
    const csv = toCsv(
      [
        { file: "a.png", result },
        { file: "notes,txt", error: "notes,txt: not a readable image" },
      ],
      "not a medical device",
      { model: "nih-run", version: "0.3.0", thresholdMethod: "youden", exported: "2026-01-02T03:04:05Z" },
    );
    const lines = csv.trimEnd().split("\r\n");
    const per = (f: string) =>
      ["probability", "threshold", "band_low", "band_high", "call", "reliable", "positive"].map((k) => `${f}_${k}`);
    expect(lines[0]).toBe(
      ["file", "status", "top_finding", ...per("NORMAL"), ...per("PNEUMONIA"), "seconds", "error", "model",
        "model_version", "threshold_method", "exported_at", "notice"].join(","),
    );
    expect(lines[1]).toBe(
      "a.png,ok,PNEUMONIA,0.170000,0.450000,0.450000,0.450000,negative,,0," +
        "0.830000,0.550000,0.500000,0.900000,possible,0,1," +
        "0.0420,,nih-run,0.3.0,youden,2026-01-02T03:04:05Z,not a medical device",
    );
    expect(lines[2]).toBe(
      '"notes,txt",error,,,,,,,,,,,,,,,,,"notes,txt: not a readable image",nih-run,0.3.0,youden,' +
        "2026-01-02T03:04:05Z,not a medical device",
    );
    expect(lines).toHaveLength(3);
  });
});
