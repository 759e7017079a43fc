// End to end in a real headless Chromium, as a clinician would use the page: upload real X-rays
// and 16-bit DICOMs (one of a knee-like body part), read honest calls, zoom, pan and window the image, move with the keyboard,
// reload and find the history, use the phone layout; axe-core (WCAG 2.2 A/AA) on every state.
//
//   node e2e/upload.mjs BASE_URL XRAY_FILE TEXT_FILE DICOM16_FILE CT_DICOM_FILE OTHER_PART_DICOM OUT_DIR
//
// Driven by tests/test_web_e2e.py, which starts `cxr serve` first. Uses Debian's chromium
// (CHROMIUM env to override) through playwright-core: no browser download. Screenshots of each
// state are written to OUT_DIR for a person to look at.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, join } from "node:path";

const [base, xray, text, dicom, ct, otherPart, outDir] = process.argv.slice(2);
if (!base || !xray || !text || !dicom || !ct || !otherPart || !outDir) {
  console.error("usage: node e2e/upload.mjs BASE_URL XRAY_FILE TEXT_FILE DICOM16_FILE CT_DICOM_FILE OTHER_PART_DICOM OUT_DIR");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-dev-shm-usage",
];
const TIMEOUT = 60_000;
const PREDICT_BUDGET = 150_000; // bytes of one predict answer (the display image comes apart)

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

/** axe-core with the WCAG 2.0/2.1/2.2 A and AA rules; fails listing each violation. */
async function axe(page, state) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, {
      runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"] },
    });
    return r.violations.map((v) => `${v.id} (${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join("; ")})`);
  });
  check(violations.length === 0, `axe: no WCAG 2.2 A/AA violation in the ${state} state ${violations.join(" | ")}`);
}

const zoomText = (page) => page.getByTestId("zoom").innerText();
const transform = (page) => page.locator(".pane .content").first().evaluate((el) => el.style.transform);

/** Distinct grey levels of the original's canvas, the grey value at its centre, their sum. */
const canvasStats = (page) =>
  page.locator("[data-testid=image-canvas]").first().evaluate((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const levels = new Set();
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) {
      levels.add(d[i]);
      sum += d[i];
    }
    const mid = (Math.floor(c.height / 2) * c.width + Math.floor(c.width / 2)) * 4;
    return { levels: levels.size, centre: d[mid], width: c.width, sum };
  });

async function waitForResult(page, name) {
  await page.waitForFunction((n) => document.querySelector("#result-title")?.textContent === n, name);
  await page.locator(".findings .finding").first().waitFor();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: FLAGS,
  timeout: TIMEOUT,
});
const consoleErrors = [];
const predictSizes = []; // [file size class, bytes] of every predict answer
const displayFetches = []; // [status, content type, bytes] of every display image fetched
const watch = (page) => {
  page.setDefaultTimeout(TIMEOUT);
  page.on("response", async (r) => {
    const url = new URL(r.url());
    if (url.pathname === "/api/predict" && r.status() === 200 && url.searchParams.get("images") !== "false") {
      predictSizes.push((await r.body()).length);
    } else if (url.pathname.startsWith("/api/display/")) {
      const entry = [r.status(), r.headers()["content-type"], null]; // recorded at once
      displayFetches.push(entry);
      entry[2] = (await r.body()).length;
    }
  });
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(msg.text()));
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
};
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, bypassCSP: true, acceptDownloads: true });
  const page = await context.newPage();
  watch(page);

  // --- empty state ---
  const t0 = Date.now();
  await page.goto(base, { waitUntil: "networkidle" });
  check((await page.getByRole("note").innerText()).includes("Not a medical device"), "the notice is shown");
  await page.locator("#model-title").waitFor();
  check(!(await page.locator(".model-info").innerText()).includes("/"), "model card shows no server path");
  await page.keyboard.press("Tab");
  check(
    (await page.evaluate(() => document.activeElement?.textContent)) === "Skip to the result",
    "the first Tab reaches the skip link",
  );
  await axe(page, "empty (desktop)");
  await page.screenshot({ path: join(outDir, "empty.png") });

  // --- the model card: positives and validation intervals per finding ---
  await page.locator(".model-info summary").click();
  const card = await page.locator(".model-info").innerText();
  // ("n/a" is fine; an absolute or home path anywhere is not)
  check(!/(^|[\s("'=:])(\/|~\/)[\w.-]+\//m.test(card), "the open model card shows no server path");
  const caption = await page.getByTestId("metrics-caption").innerText();
  check(caption.includes("95% intervals from 300 patient bootstrap resamples"), `the card states its intervals: ${caption}`);
  const pneumonia = await page.locator(".model-info tbody tr", { hasText: "Pneumonia" }).innerText();
  check(/\d+ of \d+/.test(pneumonia) && /\d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\)/.test(pneumonia), `positives and AUROC interval per finding: ${pneumonia.replace(/\s+/g, " ")}`);
  await axe(page, "model card open (desktop)");
  await page.locator(".model-info").screenshot({ path: join(outDir, "model-card.png") });
  await page.locator(".model-info summary").click();

  // --- a real X-ray: honest calls ---
  await page.setInputFiles("#file-input", xray);
  await waitForResult(page, basename(xray));
  console.log(`   upload to result: ${Date.now() - t0} ms including page load`);
  const calls = await page.locator(".findings .call").evaluateAll((els) => els.map((e) => e.classList[1]));
  check(calls.length >= 2 && calls.every((c) => ["positive", "possible", "negative"].includes(c)), `three-way calls: ${calls}`);
  // the accessible names, as Chromium computes them for a screen reader
  const snapshot = await page.locator(".findings").ariaSnapshot();
  // (Chromium puts a space before the commas of screen-reader-only spans; speech ignores it)
  const labels = [...snapshot.matchAll(/button "([^"]+)"/g)].map((m) => m[1].replace(/ ,/g, ","));
  check(
    labels.length === calls.length &&
      labels.every((l) => /^[A-Z][a-z ]+ [<>]?\d+(\.\d+)?%, threshold [<>]?\d+(\.\d+)?%, (positive|possible|negative)/i.test(l)),
    `findings read as sentences: ${labels.join(" / ")}`,
  );
  const slider = await page.locator(".opacity input").getAttribute("aria-valuetext");
  check(slider === "opacity 50%", `the slider reads "${slider}", not a raw float`);
  const pcts = await page.locator(".finding-pct").allInnerTexts();
  for (const p of pcts) {
    const [prob, thr] = [...p.matchAll(/(\d+\.\d+)%/g)].map((m) => m[1]);
    check(prob !== thr, `probability and threshold never print the same: ${p.replace(/\n/g, " ")}`);
  }
  check((await page.locator(".band").count()) >= 1, "the borderline band is shaded on the bars");
  check((await page.getByTestId("no-gate-banner").innerText()).includes("Input checks are off"), "no-gate banner shown");
  check((await page.getByTestId("announcer").innerText()).startsWith("Result for"), "the result is announced (aria-live)");
  check((await page.getByTestId("map-caption").innerText()).includes("2×2 cells"), "Grad-CAM states its resolution");
  // The called class of a two-class run can be the less probable one, whose Grad-CAM map is
  // empty: look at the most probable finding's map (the list is sorted by probability).
  const names = await page.locator(".findings .finding-name").allInnerTexts();
  await page.locator(".findings .finding").first().click();
  await page.getByTestId("heatmap").waitFor();
  // NORMAL's validation AUROC is not estimable in this run: flagged, greyed, not counted
  const unreliable = await page.locator(".findings li.unreliable").innerText();
  check(unreliable.includes("Normal") && unreliable.includes("unreliable: AUROC n/a"), "unreliable finding flagged");
  const summary = await page.getByTestId("summary").innerText();
  check(summary.includes("1 unreliable finding not counted"), `left out of the counts: ${summary}`);
  await page.getByLabel("Count unreliable findings too").check();
  check(!(await page.getByTestId("summary").innerText()).includes("not counted"), "counted when asked");
  await page.getByLabel("Count unreliable findings too").uncheck();
  // an empty map says so instead of showing nothing under the finding's name
  // the less probable class's map of a two-class softmax has no positive evidence
  const least = names[names.length - 1];
  await page.locator(".findings .finding").last().click();
  await page.waitForFunction((name) => document.querySelector("[data-testid=map-caption]").textContent.includes(`${name}:`), least);
  const empty = await page.getByTestId("map-caption").innerText();
  check(empty.includes("empty"), `an empty map is named as such: ${empty}`);
  await page.locator(".findings .finding").first().click();
  await page.getByRole("button", { name: "Use the finer layer" }).click();
  await page.waitForFunction(() => document.querySelector("[data-testid=map-caption]").textContent.includes("3×3"));
  check(true, "the finer layer gives a 3×3 map");
  await page.getByRole("button", { name: "Use the last layer" }).click();
  await page.getByTestId("heatmap").waitFor();

  // --- zoom and pan, linked across panes ---
  const pane = page.getByTestId("pane").first();
  const box = await pane.boundingBox();
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.3);
  await page.mouse.wheel(0, -600);
  await page.waitForFunction(() => document.querySelector("[data-testid=zoom]").textContent !== "zoom 100%");
  const zoomed = await zoomText(page);
  check(Number(zoomed.match(/\d+/)[0]) > 150, `wheel zooms in (${zoomed})`);
  const before = await transform(page);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5, { steps: 4 });
  await page.mouse.up();
  check((await transform(page)) !== before, "dragging pans the zoomed image");
  await page.getByRole("button", { name: "Side by side" }).click();
  const transforms = await page.locator(".pane .content").evaluateAll((els) => els.map((e) => e.style.transform));
  check(transforms.length === 3 && new Set(transforms).size === 1, "side by side: three panes linked for zoom and pan");
  await page.screenshot({ path: join(outDir, "side-by-side.png") });
  await page.getByRole("button", { name: "Side by side" }).click();
  await page.getByRole("button", { name: "Fit" }).click();
  check((await zoomText(page)) === "zoom 100%", "Fit returns to the whole image");
  await page.getByRole("button", { name: "1:1" }).click();
  const expected = await page.evaluate(() => {
    const pane = document.querySelector("[data-testid=pane]");
    const shown = Number(document.querySelector("[data-testid=viewer-status]").textContent.match(/-bit \w+ (\d+)×/)[1]);
    return `zoom ${Math.round(100 * Math.max(1, shown / pane.clientWidth))}%`;
  });
  check((await zoomText(page)) === expected, `1:1 shows one preview pixel per screen pixel (${expected}; never below fit)`);
  await page.keyboard.press("0");

  // --- keyboard: findings list, overlay, help ---
  await page.locator(".findings .finding[tabindex='0']").focus();
  const first = await page.locator(".finding.selected .finding-name").innerText();
  await page.keyboard.press("ArrowDown");
  const second = await page.locator(".finding.selected .finding-name").innerText();
  const focused = await page.evaluate(() => document.activeElement?.querySelector(".finding-name")?.textContent);
  check(first !== second && focused === second, `ArrowDown moves selection and focus (${first} -> ${second})`);
  const ring = await page.evaluate(() => {
    const focused = document.activeElement;
    const other = [...document.querySelectorAll(".finding")].find((b) => b !== focused);
    const f = getComputedStyle(focused);
    return { focused: `${f.outlineStyle} ${f.outlineWidth}`, other: getComputedStyle(other).outlineStyle };
  });
  check(ring.focused === "solid 3px" && ring.other === "none", `focus ring distinct from selection (${ring.focused})`);
  await page.keyboard.press("ArrowUp");
  await page.keyboard.press("h");
  check((await page.getByTestId("heatmap").count()) === 0, "H hides the heatmap");
  await page.keyboard.press("h");
  await page.getByTestId("heatmap").waitFor();
  check(true, "H shows it again");
  await page.getByRole("button", { name: "Full screen" }).click();
  await page.waitForFunction(() => document.fullscreenElement?.classList.contains("viewer"));
  check(true, "Full screen puts the viewer in full screen");
  await page.keyboard.press("f");
  await page.waitForFunction(() => !document.fullscreenElement);
  await page.keyboard.press("?");
  check((await page.getByRole("dialog").innerText()).includes("next image"), "? opens the keyboard help");
  await page.keyboard.press("Escape");
  await axe(page, "results (desktop)");
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(outDir, "desktop.png") });

  // --- a 16-bit DICOM: header panel, window/level at full depth ---
  await page.setInputFiles("#file-input", dicom);
  await waitForResult(page, basename(dicom));
  await page.waitForFunction(() => document.querySelector("[data-testid=depth]")?.textContent === "16-bit image");
  const [status, type] = displayFetches.at(-1) ?? [];
  check(
    displayFetches.length >= 2 && status === 200 && type === "image/png",
    `the 16-bit display image is fetched apart from the answer (${JSON.stringify(displayFetches)})`,
  );
  await page.locator(".dicom summary").click();
  const header = await page.getByTestId("dicom-header").innerText();
  check(header.includes("CR") && header.includes("PA") && header.includes("Explicit VR Little Endian"), "DICOM header panel");
  check(!(await page.content()).includes("SECRET-123"), "no patient identifier on the page");
  const full = await canvasStats(page);
  await page.keyboard.press("w"); // drag now sets window/level
  const dbox = await page.getByTestId("pane").first().boundingBox();
  for (let i = 0; i < 5; i++) {
    await page.mouse.move(dbox.x + dbox.width * 0.8, dbox.y + dbox.height / 2);
    await page.mouse.down();
    await page.mouse.move(dbox.x + dbox.width * 0.2, dbox.y + dbox.height / 2, { steps: 3 });
    await page.mouse.up();
  }
  const narrow = await canvasStats(page);
  const win = await page.getByTestId("window").innerText();
  check(narrow.sum !== full.sum && win !== "50% ± 50%", `dragging changes the pixels under the viewer (window ${win})`);
  // A window ~1/20 of the range: an 8-bit source would leave at most ~13 grey levels on screen.
  check(narrow.levels > 60, `narrow window keeps ${narrow.levels} grey levels (full depth; window ${win})`);
  await page.keyboard.press("w");
  await page.keyboard.press("i");
  const inverted = await canvasStats(page);
  check(inverted.centre === 255 - narrow.centre, "I inverts the image");
  await page.keyboard.press("l");
  const lung = await page.getByTestId("window").innerText();
  check(lung !== win, `the lung preset sets a window (${lung})`);
  check(full.levels > 200, `full window shows ${full.levels} levels`);
  await page.locator("#result-title").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(outDir, "dicom-window.png") });

  // --- a real DICOM of another body part (pydicom-data's RG3, EXTREMITY): a warning ---
  await page.setInputFiles("#file-input", otherPart);
  await waitForResult(page, basename(otherPart));
  const banners = await page.locator(".banner.warn").allInnerTexts();
  check(banners.some((b) => b.includes("EXTREMITY")), `a body part other than chest is warned: ${banners.join(" / ")}`);

  // --- a map identical to another finding's is named as such, not shown as its own ---
  // The tiny two-class run's maps are never identical (one is always empty), so the server's
  // answer is passed through with the second finding's map replaced by the first's and the note
  // the server writes for that case (tests/test_serve.py checks the server side).
  await page.route("**/api/predict?*", async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    const [a, b] = body.findings.map((f) => f.finding);
    if (body.heatmaps[a]) {
      body.heatmaps[b] = body.heatmaps[a];
      body.heatmap_notes = { ...body.heatmap_notes, [b]: `identical to the map for ${a}` };
    }
    await route.fulfill({ response, json: body });
  });
  await page.setInputFiles("#file-input", { name: "same-maps.jpeg", mimeType: "image/jpeg", buffer: readFileSync(xray) });
  await waitForResult(page, "same-maps.jpeg");
  await page.unroute("**/api/predict?*");
  const [firstName, secondName] = await page.locator(".findings .finding-name").allInnerTexts();
  await page.locator(".findings .finding").nth(1).click();
  await page.waitForFunction(() => document.querySelector("[data-testid=map-caption]").textContent.includes("identical"));
  const same = await page.getByTestId("map-caption").innerText();
  check(
    same.includes(`Grad-CAM for ${secondName}: identical to the map for`) && (await page.getByTestId("heatmap").count()) === 0,
    `an identical map is named as such and not overlaid: ${same} (${firstName})`,
  );
  await page.locator(".result-rows li").last().getByRole("button", { name: /Remove/ }).click();
  await page.locator(".result-rows li").last().getByRole("button", { name: /Remove/ }).click();

  // --- refusals and errors in plain words, with Retry ---
  // dropped on the page outside the drop box
  const ctBytes = readFileSync(ct).toString("base64");
  await page.evaluate(
    ([b64, name]) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, { type: "application/dicom" }));
      const target = document.querySelector("footer");
      target.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    },
    [ctBytes, basename(ct)],
  );
  await page.getByRole("alert").waitFor();
  check(true, "a file dropped on the footer is taken");
  const refusal = await page.getByRole("alert").innerText();
  check(refusal.includes("CT slice"), `a CT DICOM is refused: ${refusal}`);
  await page.setInputFiles("#file-input", text);
  await page.waitForFunction(() => document.querySelector("[role=alert]")?.textContent.includes("could not be read"));
  check(await page.getByRole("button", { name: "Retry", exact: true }).isVisible(), "plain error with a Retry button");
  check((await page.locator(".result-rows li").count()) === 4, "four files in the results list");
  await page.locator(".result-rows .row-main[tabindex='0']").focus();
  await page.keyboard.press("ArrowUp");
  check((await page.locator("#error-title").innerText()) === basename(ct), "ArrowUp in the results list selects the row above");
  await page.keyboard.press("ArrowDown");
  const shown = await page.getByTestId("row-name").allInnerTexts();
  const cut = await page.getByTestId("row-name").evaluateAll((els) => els.filter((e) => e.scrollWidth > e.clientWidth + 1).length);
  check(shown.every((n) => n.length <= 22) && cut === 0, `names fit their column, cut in the middle: ${shown.join(", ")}`);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download CSV" }).click(),
  ]);
  const csv = readFileSync(await download.path(), "utf8").split("\r\n");
  const head = csv[0].split(",");
  check(
    ["model", "model_version", "threshold_method", "exported_at", "PNEUMONIA_band_low", "PNEUMONIA_call"].every((c) =>
      head.includes(c),
    ) && csv[1].includes(basename(xray)),
    "the CSV carries model, version, threshold method, time, band and call",
  );
  await axe(page, "error (desktop)");
  await page.screenshot({ path: join(outDir, "error.png"), fullPage: true });

  // --- J/K between images; history survives a reload ---
  await page.locator("body").click({ position: { x: 5, y: 5 } });
  await page.keyboard.press("k");
  await page.keyboard.press("k");
  check((await page.locator("#result-title").innerText()) === basename(dicom), "K goes to the previous image");
  await page.keyboard.press("j");
  check((await page.locator("#error-title").innerText()) === basename(ct), "J goes to the next image");
  await page.reload({ waitUntil: "networkidle" });
  await page.locator(".result-rows li").nth(3).waitFor();
  check((await page.locator(".result-rows li").count()) === 4, "the history survives a reload (IndexedDB)");
  await page.locator(".result-rows .row-main").first().click();
  await waitForResult(page, basename(xray));
  check(true, "a stored result opens after the reload");
  // the server no longer holds the display image (expired, restarted): the 8-bit preview is
  // windowed, and the page says why
  await page.route("**/api/display/**", (route) =>
    route.fulfill({ status: 404, json: { error: "expired", code: "display_expired", status: 404 } }),
  );
  await page.locator(".result-rows .row-main").nth(1).click();
  await waitForResult(page, basename(dicom));
  await page.getByTestId("depth-note").waitFor();
  check(
    (await page.getByTestId("depth").innerText()) === "8-bit preview" &&
      (await page.getByTestId("depth-note").innerText()).includes("no longer on the server"),
    "an expired display image falls back to the 8-bit preview and says so",
  );
  await page.unroute("**/api/display/**");
  await page.getByRole("button", { name: "Forget all" }).click();
  await page.waitForFunction(() => document.querySelector("[data-testid=announcer]").textContent.includes("deleted"));
  await page.reload({ waitUntil: "networkidle" });
  check((await page.locator(".result-rows li").count()) === 0, "Forget all empties the history");

  // --- phone ---
  const phoneContext = await browser.newContext({
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
    bypassCSP: true, // axe-core is injected as a script
  });
  const phone = await phoneContext.newPage();
  watch(phone);
  await phone.goto(base, { waitUntil: "networkidle" });
  await axe(phone, "empty (phone)");
  await phone.setInputFiles("#file-input", xray);
  await waitForResult(phone, basename(xray));
  await phone.locator(".findings .finding").first().click();
  await phone.getByTestId("heatmap").waitFor();
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 1, `no sideways scrolling at phone width (overflow ${overflow}px)`);
  const small = await phone.evaluate(() =>
    [...document.querySelectorAll(".toolbar button, .finding, .row-actions button, .row-main")]
      .map((b) => b.getBoundingClientRect())
      .filter((r) => r.height < 44).length,
  );
  check(small === 0, "phone controls are at least 44 px tall");
  const clipped = await phone.locator(".finding-name").evaluateAll((els) =>
    els.filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent),
  );
  check(clipped.length === 0, `finding names fit without breaking mid-word (${clipped})`);
  // pinch: two fingers moving apart on the image zoom it
  const pbox = await phone.getByTestId("pane").first().boundingBox();
  const cdp = await phoneContext.newCDPSession(phone);
  const cx = pbox.x + pbox.width / 2;
  const cy = pbox.y + pbox.height / 2;
  const touch = (type, d) =>
    cdp.send("Input.dispatchTouchEvent", {
      type,
      touchPoints: type === "touchEnd" ? [] : [
        { x: cx - d, y: cy, id: 1 },
        { x: cx + d, y: cy, id: 2 },
      ],
    });
  await touch("touchStart", 20);
  for (const d of [30, 45, 60, 80]) await touch("touchMove", d);
  await touch("touchEnd", 0);
  const pinched = await phone.getByTestId("zoom").evaluate((e) => e.textContent);
  check(Number(pinched.match(/\d+/)[0]) > 150, `pinch zooms the image (${pinched})`);
  await phone.getByRole("button", { name: "Fit" }).click();
  await phone.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  await phone.locator(".findings .finding").last().tap();
  await phone.waitForTimeout(200);
  const view = await phone.getByTestId("pane").first().boundingBox();
  check(view && view.y >= -1 && view.y + view.height <= 845, `after tapping a finding the image is in view (top ${view?.y})`);
  await axe(phone, "results (phone)");
  await phone.screenshot({ path: join(outDir, "phone.png") });
  await phone.evaluate(() => window.scrollTo(0, 0));
  await phone.screenshot({ path: join(outDir, "phone-top.png") });

  check(
    predictSizes.length >= 4 && Math.max(...predictSizes) < PREDICT_BUDGET,
    `every predict answer is under ${PREDICT_BUDGET / 1000} KB (${predictSizes.join(", ")} bytes)`,
  );
  const unexpected = consoleErrors.filter((e) => !/\b(422|400|404)\b/.test(e));
  check(unexpected.length === 0, `no page errors (${unexpected.join(" | ")})`);
  console.log("e2e: all checks passed");
} finally {
  await browser.close();
}
