// Drives the skiff dashboard in Debian's headless Chromium (playwright-core, no
// downloaded browser). Run by the e2e test `dashboard_in_a_real_browser`, which
// starts a real cluster with a deployment `hello` of 2 replicas and then checks
// through the API what this script did from the page.
//
//   node dashboard.mjs URL SCREENSHOT_DIR WASM_FILE
//
// Prints one line per step; exits non-zero with the reason on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [url, shots, wasm] = process.argv.slice(2);
if (!url || !shots || !wasm) {
  console.error("usage: node dashboard.mjs URL SCREENSHOT_DIR WASM_FILE");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const TIMEOUT = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  // Playwright gives the browser a fresh profile in a temp dir and removes it.
});

const step = (msg) => console.log(`step: ${msg}`);

// Waits until deployment `name`'s row shows desired/ready/available `want`
// ("4/4/4"); on timeout says what the row showed instead.
async function waitCounts(p, name, want) {
  try {
    await p.waitForFunction(([name, want]) => {
      const tr = document.querySelector(`tr[data-deployment="${name}"]`);
      const cells = tr && [".desired-count", ".ready-count", ".available-count"].map((c) => tr.querySelector(c).textContent);
      return cells && cells.join("/") === want;
    }, [name, want]);
  } catch (e) {
    const row = await p.locator(`tr[data-deployment="${name}"]`).textContent().catch(() => "no row");
    throw new Error(`${name} never showed desired/ready/available ${want} (row: ${row}): ${e.message}`);
  }
}
const consoleErrors = [];
let failed = false;
let page = null;
try {
  // The server's CA is its own, not in this fresh profile's trust store; the
  // CLI's and nodes' trust of it is tested elsewhere (tests/e2e/auth.rs).
  const ignoreHTTPSErrors = url.startsWith("https://");
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors });
  // The page keeps its API token in localStorage (it also takes `?token=`).
  if (process.env.SKIFF_TOKEN) {
    await context.addInitScript((t) => localStorage.setItem("skiff-token", t), process.env.SKIFF_TOKEN);
  }
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  // A refused API call (tested below) also makes Chromium log the status; that is
  // the browser's doing, not the page's.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  step("load the cluster view");
  await page.goto(url + "/#cluster");
  await page.waitForSelector("#conn.live");
  await page.waitForSelector('article.node[data-node="n1"] .state.ready');
  await page.waitForFunction(() => document.querySelectorAll("#packing .pack-bar span").length >= 2);
  // A few snapshots so that the charts have lines.
  await page.waitForFunction(() => document.querySelectorAll("#chart-node-mem polyline").length >= 1);
  await page.waitForTimeout(2500);
  await page.screenshot({ path: join(shots, "cluster.png"), fullPage: true });

  step("see the deployed workload");
  await page.click('nav a[data-view="deployments"]');
  const row = page.locator('tr[data-deployment="hello"]');
  // hello runs without a readiness probe: running is ready, and with
  // minReadySeconds 0 ready is available.
  await waitCounts(page, "hello", "2/2/2");
  await page.screenshot({ path: join(shots, "deployments.png"), fullPage: true });

  step("scale hello to 4 with the keyboard");
  const input = row.locator("input.scale-input");
  await input.focus();
  await input.fill("4");
  await page.keyboard.press("Enter");
  await waitCounts(page, "hello", "4/4/4");

  step("an API refusal shows in the page");
  await input.fill("200000");
  await row.locator("button.scale-btn").click();
  await page.waitForSelector("#error:not([hidden])");
  const errText = await page.textContent("#error-text");
  if (!/replicas must be at most/.test(errText)) throw new Error(`unexpected error text: ${errText}`);
  console.log(`error shown: ${errText}`);
  await page.screenshot({ path: join(shots, "error.png") });
  await page.click("#error-close");
  await input.fill("4");

  step("deploy by uploading a .wasm");
  await page.setInputFiles("#deploy-file", wasm);
  await page.fill("#deploy-name", "uploaded");
  await page.fill("#deploy-replicas", "1");
  await page.click("#deploy-submit");
  await waitCounts(page, "uploaded", "1/1/1");

  step("delete it, confirming");
  await page.locator('tr[data-deployment="uploaded"] button.delete-btn').click();
  await page.waitForSelector("dialog#confirm[open]");
  await page.screenshot({ path: join(shots, "confirm-delete.png") });
  await page.click("#confirm-ok");
  await page.locator('tr[data-deployment="uploaded"]').waitFor({ state: "detached" });

  step("deploy by naming an image that was never imported: the API's refusal shows");
  await page.check("#deploy-source-image");
  if (!(await page.isHidden("#deploy-file-field")) || !(await page.isVisible("#deploy-image"))) {
    throw new Error("choosing an image did not swap the file field for the image field");
  }
  await page.fill("#deploy-image", "nosuch:1.0");
  await page.fill("#deploy-name", "fromimage");
  await page.click("#deploy-submit");
  await page.waitForSelector("#error:not([hidden])");
  const imageErr = await page.textContent("#error-text");
  if (!/^deploying fromimage: image nosuch:1\.0 is not imported; run `skiff image import/.test(imageErr)) {
    throw new Error(`unexpected error text: ${imageErr}`);
  }
  console.log(`error shown: ${imageErr}`);
  const listed = await page.textContent("#deploy-status");
  if (listed.includes("cannot list")) throw new Error(`the image list failed: ${listed}`);
  await page.screenshot({ path: join(shots, "deploy-image-error.png"), fullPage: true });
  await page.click("#error-close");
  await page.check("#deploy-source-wasm");

  step("replicas view");
  await page.click('nav a[data-view="replicas"]');
  await page.waitForFunction(() =>
    [...document.querySelectorAll('#replicas-table tbody tr')].filter((tr) => tr.cells[1].textContent === "hello" && tr.querySelector(".state.running")).length === 4);
  await page.waitForTimeout(2000);
  await page.screenshot({ path: join(shots, "replicas.png"), fullPage: true });

  step("events view");
  await page.click('nav a[data-view="events"]');
  await page.locator("#events-table tbody tr", { hasText: "scaled from 2 to 4 replicas" }).first().waitFor();
  await page.screenshot({ path: join(shots, "events.png"), fullPage: true });

  step("tail a replica's logs");
  await page.click('nav a[data-view="logs"]');
  await page.waitForFunction(() => document.querySelectorAll("#logs-replica option").length >= 1);
  await page.click("#logs-start");
  await page.waitForFunction(() => /hello #\d+/.test(document.querySelector("#logs-output").textContent));
  await page.screenshot({ path: join(shots, "logs.png"), fullPage: true });
  await page.click("#logs-stop");

  step("phone width, dark mode");
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 }, colorScheme: "dark", isMobile: true, ignoreHTTPSErrors,
  });
  if (process.env.SKIFF_TOKEN) {
    await phone.addInitScript((t) => localStorage.setItem("skiff-token", t), process.env.SKIFF_TOKEN);
  }
  const p2 = await phone.newPage();
  p2.setDefaultTimeout(TIMEOUT);
  await p2.goto(url + "/#deployments");
  await waitCounts(p2, "hello", "4/4/4");
  const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a phone screen`);
  await p2.screenshot({ path: join(shots, "phone-dark-deployments.png"), fullPage: true });
  await p2.goto(url + "/#cluster");
  await p2.waitForSelector('article.node[data-node="n1"]');
  await p2.screenshot({ path: join(shots, "phone-dark-cluster.png"), fullPage: true });

  if (consoleErrors.length) throw new Error(`the page logged errors: ${consoleErrors.join(" | ")}`);
  console.log("ok");
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.message}`);
  if (page) {
    // What the page said, and how it looked, when it went wrong.
    const said = await page.evaluate(() => ({
      error: document.querySelector("#error").hidden ? null : document.querySelector("#error-text").textContent,
      deploy: document.querySelector("#deploy-status").textContent,
      conn: document.querySelector("#conn").textContent,
    })).catch(() => null);
    console.error(`page state: ${JSON.stringify(said)}`);
    await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
