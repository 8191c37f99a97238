// Drives the admin dashboard in Debian's Chromium (headless): the backends and changing
// numbers must show, each listener with its mode, the pool's charts, the backend's latency,
// statuses and connection reuse, clicking Drain must change the backend's state and show in the
// events, Enable must restore it, and the config in force must be there.
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
  // A script error in the page fails the run; console errors are shown to help explain failures.
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") console.error(`browser console: ${m.text()}`); });
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

  // The backend's pool card draws both history charts, each a line of at least two points.
  for (const chart of ["rate", "errors"]) {
    await page.waitForFunction(
      ([sel, chart]) => {
        const svg = document.querySelector(sel)?.closest("section[data-pool]")
          ?.querySelector(`svg[data-chart="${chart}"]`);
        const line = svg?.querySelector("polyline");
        return (line?.getAttribute("points") || "").trim().split(/\s+/).filter(Boolean).length >= 2;
      },
      [row, chart],
      { timeout: 10000 },
    );
  }

  // Latency percentiles: numbers (not "–") under traffic, p50 no more than p99.
  const cell = (field) => `${row} [data-field="${field}"]`;
  const isNumber = (sel) => { const t = document.querySelector(sel)?.textContent.trim(); return !!t && Number.isFinite(Number(t)); };
  for (const field of ["p50", "p99"]) await page.waitForFunction(isNumber, cell(field), { timeout: 10000 });
  const p50 = Number(await page.textContent(cell("p50")));
  const p99 = Number(await page.textContent(cell("p99")));
  if (!(p50 <= p99)) throw new Error(`latency p50 ${p50} ms above p99 ${p99} ms`);

  // The statuses breakdown, its tooltip counting the 2xx answers.
  await page.waitForSelector(cell("statuses"), { state: "attached", timeout: 5000 });
  await page.waitForFunction(
    (sel) => /2xx [1-9]/.test(document.querySelector(sel)?.getAttribute("title") || ""),
    `${cell("statuses")} [title]`,
    { timeout: 10000 },
  );

  // Connection reuse: new upstream connections per request, well below one with keep-alive.
  await page.waitForFunction(isNumber, cell("reuse"), { timeout: 10000 });
  const reuse = Number(await page.textContent(cell("reuse")));
  if (!(reuse < 1)) throw new Error(`new connections per request ${reuse}, expected below 1`);

  // The config in force.
  await page.waitForSelector("#config-text", { state: "attached", timeout: 5000 });

  await page.click(`${row} button[data-action="drain"]`);
  await page.waitForSelector(`${row} [data-state="drained"], ${row} [data-state="draining"]`, { timeout: 5000 });
  await page.waitForSelector(`${row} button[data-action="enable"]`, { timeout: 5000 });
  // The drain shows in the events timeline, naming the backend.
  await page.waitForFunction(
    (address) => [...document.querySelectorAll('#events [data-event-kind="drain"]')]
      .some((e) => e.textContent.includes(address)),
    backend,
    { timeout: 5000 },
  );
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await page.click(`${row} button[data-action="enable"]`);
  await page.waitForSelector(`${row} [data-state="healthy"]`, { timeout: 5000 });
  if (pageErrors.length) throw new Error(`errors in the page: ${pageErrors.join("; ")}`);
  console.log("dashboard ok");
} finally {
  await browser.close();
}
