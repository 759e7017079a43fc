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
  it("writes one row per file with every finding's probability, threshold and call", () => {
    const csv = toCsv(
      [
        { file: "a.png", result: prediction() },
        { file: "notes,txt", error: "notes,txt: not a readable image" },
      ],
      "not a medical device",
    );
    const lines = csv.trimEnd().split("\r\n");
    expect(lines[0]).toBe(
      "file,status,top_finding,NORMAL_probability,NORMAL_threshold,NORMAL_positive," +
        "PNEUMONIA_probability,PNEUMONIA_threshold,PNEUMONIA_positive,seconds,error,notice",
    );
    expect(lines[1]).toBe(
      "a.png,ok,PNEUMONIA,0.170000,0.450000,0,0.830000,0.550000,1,0.0420,,not a medical device",
    );
    expect(lines[2]).toBe(
      '"notes,txt",error,,,,,,,,,"notes,txt: not a readable image",not a medical device',
    );
    expect(lines).toHaveLength(3);
  });
});
