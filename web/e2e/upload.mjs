// End to end in a real headless Chromium: upload a real X-ray, see findings and the heatmap,
// screenshot at desktop and phone widths; upload a text file and see the API's error.
//
//   node e2e/upload.mjs BASE_URL XRAY_FILE TEXT_FILE OUT_DIR
//
// Driven by tests/test_web_e2e.py, which starts `cxr serve` first. Uses Debian's chromium
// (CHROMIUM env to override) through playwright-core: no browser download.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, xray, text, outDir] = process.argv.slice(2);
if (!base || !xray || !text || !outDir) {
  console.error("usage: node e2e/upload.mjs BASE_URL XRAY_FILE TEXT_FILE OUT_DIR");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

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

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: FLAGS,
  timeout: TIMEOUT,
});
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(TIMEOUT);
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(msg.text()));
  page.on("pageerror", (err) => consoleErrors.push(String(err)));

  await page.goto(base, { waitUntil: "networkidle" });
  const notice = page.getByRole("note");
  check((await notice.innerText()).includes("Not a medical device"), "the notice is shown");
  await page.getByText("Intended use").waitFor();
  check(true, "model information loaded");

  // a real X-ray: findings with thresholds and calls, the heatmap over the image
  await page.setInputFiles("#file-input", xray);
  await page.locator(".findings .finding").first().waitFor();
  const names = await page.locator(".finding-name").allInnerTexts();
  const pcts = await page
    .locator(".findings .bar")
    .evaluateAll((bars) => bars.map((b) => Number(b.getAttribute("aria-valuenow"))));
  check(names.length >= 2, `findings listed: ${names.join(", ")}`);
  check(pcts.every((p, i) => i === 0 || pcts[i - 1] >= p), "sorted by probability");
  check((await page.locator(".threshold").count()) === names.length, "thresholds marked");
  const calls = await page.locator(".call").allInnerTexts();
  check(calls.every((c) => c === "Positive" || c === "Negative"), `calls shown: ${calls}`);
  const heat = page.getByTestId("heatmap");
  await heat.waitFor();
  const box = await heat.boundingBox();
  check(box && box.width > 100 && box.height > 100, "the heatmap is laid over the X-ray");
  const loaded = await page.evaluate(() =>
    [...document.querySelectorAll(".stack img")].every((i) => i.complete && i.naturalWidth > 0),
  );
  check(loaded, "original, heatmap and model view images decoded");

  // another finding: its heatmap is fetched and shown; the opacity slider moves it
  await page.locator(".finding").nth(1).click();
  await page.waitForFunction(
    () => document.querySelector(".finding.selected .finding-name")?.textContent &&
      document.querySelector("[data-testid=heatmap]")?.getAttribute("alt")?.includes(
        document.querySelector(".finding.selected .finding-name").textContent,
      ),
  );
  check(true, "clicking a finding shows its own heatmap");
  await page.locator(".opacity input").fill("0.8");
  const opacity = await heat.evaluate((el) => getComputedStyle(el).opacity);
  check(Math.abs(Number(opacity) - 0.8) < 0.01, `opacity slider sets ${opacity}`);
  await page.locator(".finding").first().click();
  await page.screenshot({ path: join(outDir, "desktop.png"), fullPage: true });

  // a text file: the server's message, shown to the person
  await page.setInputFiles("#file-input", text);
  const alert = page.getByRole("alert");
  await alert.waitFor();
  const message = await alert.innerText();
  check(message.includes("not a readable image"), `error shown: ${message}`);
  check((await page.locator(".results tbody tr").count()) === 2, "both files in the table");
  await page.screenshot({ path: join(outDir, "error.png"), fullPage: true });

  // phone width
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
  phone.setDefaultTimeout(TIMEOUT);
  await phone.goto(base, { waitUntil: "networkidle" });
  await phone.setInputFiles("#file-input", xray);
  await phone.getByTestId("heatmap").waitFor();
  const overflow = await phone.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  check(overflow <= 1, `no sideways scrolling at phone width (overflow ${overflow}px)`);
  await phone.screenshot({ path: join(outDir, "phone.png"), fullPage: true });

  const unexpected = consoleErrors.filter((e) => !e.includes("422"));
  check(unexpected.length === 0, `no page errors (${unexpected.join(" | ")})`);
  console.log("e2e: all checks passed");
} finally {
  await browser.close();
}
