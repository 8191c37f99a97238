// Drives the admin dashboard in Debian's Chromium (headless): the backends and changing
// numbers must show, each listener with its mode, clicking Drain must change the backend's state, Enable must restore it.
// usage: node dashboard.mjs DASHBOARD_URL BACKEND_ADDRESS SCREENSHOT_PATH
import { chromium } from "playwright-core";

const [url, backend, screenshot] = process.argv.slice(2);
const row = `tr[data-backend="${backend}"]`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1360, height: 520 } });
  await page.goto(url);
  await page.waitForSelector(`${row} [data-state="healthy"]`, { timeout: 10000 });
  // Every listener shows with its mode: the HTTP one and the TCP one.
  await page.waitForSelector(`[data-listener][data-mode="http"]`, { timeout: 5000 });
  const tcp = await page.textContent(`[data-listener][data-mode="tcp"]`, { timeout: 5000 });
  if (!tcp.includes("tcp") || !tcp.includes("→ web")) throw new Error(`TCP listener shown as ${tcp}`);
  const requests = async () => Number(await page.textContent(`${row} [data-field="requests"]`));
  const before = await requests();
  // Live numbers: the request count of the backend rises while traffic flows.
  await page.waitForFunction(
    ([sel, n]) => Number(document.querySelector(sel)?.textContent) > n,
    [`${row} [data-field="requests"]`, before],
    { timeout: 10000 },
  );
  // And the rate column shows a non-zero rate once the sampler has two snapshots.
  await page.waitForFunction(
    (sel) => Number(document.querySelector(sel)?.textContent) > 0,
    `${row} [data-field="rate"]`,
    { timeout: 10000 },
  );
  // Let the charts gather a few seconds of history for the screenshot.
  await page.waitForTimeout(Number(process.env.DASHBOARD_HOLD_MS || 4000));
  await page.click(`${row} button[data-action="drain"]`);
  await page.waitForSelector(`${row} [data-state="drained"], ${row} [data-state="draining"]`, { timeout: 5000 });
  await page.waitForSelector(`${row} button[data-action="enable"]`, { timeout: 5000 });
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await page.click(`${row} button[data-action="enable"]`);
  await page.waitForSelector(`${row} [data-state="healthy"]`, { timeout: 5000 });
  console.log("dashboard ok");
} finally {
  await browser.close();
}
