// Drives the skiff dashboard in Debian's headless Chromium (playwright-core, no
// downloaded browser). Run by the e2e test `dashboard_in_a_real_browser`, which
// runs scripts/run.sh (`make run`: skiff dev, node "dev", deployments hello with
// 2 worker replicas and web with 2 HTTP replicas), adds a deployment `crash`
// whose replica has failed, `big`, whose replica no node can hold, and, as root,
// a container deployment (named by SKIFF_CONTAINER), then checks through the API
// what this script did.
//
//   node dashboard.mjs LINK SCREENSHOT_DIR WASM_FILE
//
// SKIFF_SCOPED_LINK is the same page's link with a read token scoped to
// namespace team-a, which holds deployment teamweb (#20).
//
// LINK is the dashboard's link exactly as run.sh printed it (with `?token=`):
// the page gets its token from there and nowhere else, as a user's browser does.
// Any page error, and any console error but the failed loads this script causes
// on purpose, fails it. Prints one line per step; exits non-zero with the reason
// on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [link, shots, wasm] = process.argv.slice(2);
if (!link || !shots || !wasm) {
  console.error("usage: node dashboard.mjs LINK SCREENSHOT_DIR WASM_FILE");
  process.exit(2);
}
const container = process.env.SKIFF_CONTAINER || "";
const scopedLink = process.env.SKIFF_SCOPED_LINK || "";
if (!scopedLink) {
  console.error("SKIFF_SCOPED_LINK (the dashboard's link with a token scoped to team-a) is not set");
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

// Requests this script makes fail on purpose; Chromium logs each as a console
// error ("Failed to load resource"), which is the browser's doing, not the page's.
const EXPECTED_FAILURES = [
  /\/v1\/deployments\/hello\/scale$/, // scaling to 200000: refused
  /\/v1\/blobs\/sha256:[0-9a-f]{64}$/, // HEAD: does the server have the upload already?
  /\/v1\/deployments\/fromimage$/, // an image never imported: refused
];
const errors = [];
// Loads Chromium cut short because the host's network changed (other tests
// add and remove bridges, veths and namespaces while this one runs): the
// browser's doing, not the page's; the navigation they cut is made again.
let networkCuts = 0;
// Rejects at the first error, so that a wait on a page that threw fails at
// once with the error rather than with a timeout.
let rejectOnError;
const errorSeen = new Promise((_, reject) => { rejectOnError = reject; });
errorSeen.catch(() => {});
function pageError(what) {
  errors.push(what);
  rejectOnError(new Error(`the page logged an error: ${what}`));
}
// Watches a page for errors: every page of the test goes through this.
// `failing` adds loads expected to fail on this page.
function watch(p, name, failing = []) {
  p.setDefaultTimeout(TIMEOUT);
  p.on("pageerror", (e) => pageError(`${name}: ${e.stack || e}`));
  p.on("console", (m) => {
    if (m.type() !== "error") return;
    const where = m.location().url || "";
    const expected = [...EXPECTED_FAILURES, ...failing].some((re) => re.test(where));
    if (m.text().startsWith("Failed to load resource") && expected) return;
    if (m.text().includes("net::ERR_NETWORK_CHANGED")) {
      networkCuts += 1;
      console.log(`${name}: a load was cut by a change of the host's network: ${where}`);
      return;
    }
    pageError(`${name}: console error: ${m.text()} (${where})`);
  });
  return p;
}
// Waits for `promise` unless the page errs first.
const until = (promise) => Promise.race([promise, errorSeen]);
// Navigates with `go` (a goto or a reload), again if the host's network
// changed under the load (at most three times).
async function load(go) {
  for (let tries = 1; ; tries++) {
    const cuts = networkCuts;
    await until(go());
    if (networkCuts === cuts || tries === 3) return;
    step("a load was cut by a change of the host's network: loading again");
  }
}

// Waits until deployment `name`'s row shows desired/ready/available `want`
// ("4/4/4"); on timeout says what the row showed instead.
async function waitCounts(p, name, want) {
  try {
    await until(p.waitForFunction(([name, want]) => {
      const tr = document.querySelector(`tr[data-deployment="${name}"]`);
      const cells = tr && [".desired-count", ".ready-count", ".available-count"].map((c) => tr.querySelector(c).textContent);
      return cells && cells.join("/") === want;
    }, [name, want]));
  } catch (e) {
    const row = await p.locator(`tr[data-deployment="${name}"]`).textContent().catch(() => "no row");
    throw new Error(`${name} never showed desired/ready/available ${want} (row: ${row}): ${e.message}`);
  }
}
// Opens `link` in a new page of `context`, as pasted into the address bar, and
// checks what the page made of it: the token taken out of the address bar and
// kept, the live stream connected.
async function open(context, name) {
  const p = watch(await context.newPage(), name);
  await load(() => p.goto(link));
  await until(p.waitForSelector("#conn.live"));
  const address = p.url();
  if (address.includes("token=")) throw new Error(`the token stayed in the address bar: ${address}`);
  return p;
}

// Tails replica `value` ("deployment/id") on the logs view until `re` shows.
async function tail(p, value, re, shot) {
  await until(p.selectOption("#logs-replica", value));
  await p.click("#logs-start");
  try {
    await until(p.waitForFunction((src) => new RegExp(src).test(document.querySelector("#logs-output").textContent), re.source));
  } catch (e) {
    const shown = await p.textContent("#logs-output").catch(() => "?");
    throw new Error(`the logs of ${value} never showed ${re} (shown: ${JSON.stringify(shown.slice(-300))}): ${e.message}`);
  }
  if (shot) await p.screenshot({ path: join(shots, shot), fullPage: true });
  await p.click("#logs-stop");
}

// The replicas of `deployment` as the replicas view lists them: [{id, state}].
const listed = (p, deployment) => p.evaluate((d) =>
  [...document.querySelectorAll("#replicas-table tbody tr")]
    .filter((tr) => tr.cells[1].textContent === d)
    .map((tr) => ({ id: tr.cells[0].textContent, state: tr.cells[2].textContent })), deployment);

let failed = false;
let page = null;
try {
  // The server's CA is its own, not in this fresh profile's trust store; the
  // CLI's and nodes' trust of it is tested elsewhere (tests/e2e/auth.rs).
  const ignoreHTTPSErrors = link.startsWith("https://");
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors });

  step("open the link run.sh printed: the cluster view");
  page = await open(context, "desktop");
  if (!page.url().endsWith("/")) throw new Error(`opened ${page.url()}`);
  await until(page.waitForSelector('article.node[data-node="dev"] .state.ready'));
  await until(page.waitForFunction(() => document.querySelectorAll("#packing .pack-bar span").length >= 4));
  // A few snapshots so that the charts have lines.
  await until(page.waitForFunction(() => document.querySelectorAll("#chart-node-mem polyline").length >= 1));
  await page.waitForTimeout(2500);
  await page.screenshot({ path: join(shots, "cluster.png"), fullPage: true });

  step("see the deployed workloads");
  await page.click('nav a[data-view="deployments"]');
  const row = page.locator('tr[data-deployment="hello"]');
  // hello runs without a readiness probe: running is ready, and with
  // minReadySeconds 0 ready is available. web is an HTTP component, ready
  // once routed.
  await waitCounts(page, "hello", "2/2/2");
  await waitCounts(page, "web", "2/2/2");
  await waitCounts(page, "crash", "1/0/0");
  await waitCounts(page, "big", "1/0/0");
  const crashFailed = await page.textContent('tr[data-deployment="crash"] td:nth-child(6)');
  if (crashFailed !== "1") throw new Error(`crash's row counts ${crashFailed} failed replicas, not 1`);
  if (container) await waitCounts(page, container, "1/1/1");
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
  await until(page.waitForSelector("#error:not([hidden])"));
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
  await until(page.waitForSelector("dialog#confirm[open]"));
  await page.screenshot({ path: join(shots, "confirm-delete.png") });
  await page.click("#confirm-ok");
  await until(page.locator('tr[data-deployment="uploaded"]').waitFor({ state: "detached" }));

  step("deploy by naming an image that was never imported: the API's refusal shows");
  await page.check("#deploy-source-image");
  if (!(await page.isHidden("#deploy-file-field")) || !(await page.isVisible("#deploy-image"))) {
    throw new Error("choosing an image did not swap the file field for the image field");
  }
  await page.fill("#deploy-image", "nosuch:1.0");
  await page.fill("#deploy-name", "fromimage");
  await page.click("#deploy-submit");
  await until(page.waitForSelector("#error:not([hidden])"));
  const imageErr = await page.textContent("#error-text");
  if (!/^deploying fromimage: image nosuch:1\.0 is not imported; run `skiff image import/.test(imageErr)) {
    throw new Error(`unexpected error text: ${imageErr}`);
  }
  console.log(`error shown: ${imageErr}`);
  const status = await page.textContent("#deploy-status");
  if (status.includes("cannot list")) throw new Error(`the image list failed: ${status}`);
  if (container) {
    const offered = await page.evaluate(() => [...document.querySelectorAll("#deploy-images option")].map((o) => o.value));
    if (!offered.includes("box:v1")) throw new Error(`the imported image is not offered: ${JSON.stringify(offered)}`);
  }
  await page.screenshot({ path: join(shots, "deploy-image-error.png"), fullPage: true });
  await page.click("#error-close");
  await page.check("#deploy-source-wasm");

  step("replicas view");
  await page.click('nav a[data-view="replicas"]');
  await until(page.waitForFunction(() =>
    [...document.querySelectorAll('#replicas-table tbody tr')].filter((tr) => tr.cells[1].textContent === "hello" && tr.querySelector(".state.running")).length === 4));
  const crash = await listed(page, "crash");
  if (crash.length !== 1 || crash[0].state !== "failed") throw new Error(`crash is listed as ${JSON.stringify(crash)}`);
  // A replica on no node has no logs to lead to; a failed one has.
  const big = await listed(page, "big");
  if (big.length !== 1 || big[0].state !== "pending") throw new Error(`big is listed as ${JSON.stringify(big)}`);
  const logsLink = (id) => page.locator(`#replicas-table tr[data-replica="${id}"] a[href="#logs"]`);
  if (await logsLink(big[0].id).isVisible()) throw new Error("the pending replica offers a logs link");
  if (!(await logsLink(crash[0].id).isVisible())) throw new Error("the failed replica offers no logs link");
  await page.waitForTimeout(2000);
  await page.screenshot({ path: join(shots, "replicas.png"), fullPage: true });

  step("jobs view");
  await page.click('nav a[data-view="jobs"]');
  await until(page.locator("#jobs-empty, #jobs-table tbody tr").first().waitFor());
  // Every namespace's jobs for a cluster-wide token showing all (#20).
  await until(page.waitForSelector('#jobs-table tr[data-job="team-a/teamjob"]'));
  await until(page.waitForSelector('#jobs-table tr[data-job="dfltjob"]'));
  await page.screenshot({ path: join(shots, "jobs.png"), fullPage: true });

  step("events view");
  await page.click('nav a[data-view="events"]');
  await until(page.locator("#events-table tbody tr", { hasText: "scaled from 2 to 4 replicas" }).first().waitFor());
  await page.screenshot({ path: join(shots, "events.png"), fullPage: true });

  step("logs view: a worker, an HTTP component, the failed replica" + (container ? ", the container" : ""));
  await page.click('nav a[data-view="logs"]');
  await until(page.waitForFunction(() => document.querySelectorAll("#logs-replica option").length >= 5));
  const options = await page.evaluate(() => [...document.querySelectorAll("#logs-replica option")].map((o) => o.value));
  const first = (d) => {
    const v = options.find((o) => o.startsWith(d + "/"));
    if (!v) throw new Error(`no replica of ${d} to tail among ${JSON.stringify(options)}`);
    return v;
  };
  await tail(page, first("hello"), /hello from skiff #\d+/, "logs.png");
  await tail(page, first("crash"), /giving up at once with status 3/, "logs-failed.png");
  if (container) await tail(page, first(container), /hello from a container/, "logs-container.png");

  step("the replicas view's logs link opens a replica's logs");
  await page.click('nav a[data-view="replicas"]');
  const web = (await listed(page, "web"))[0];
  if (!web) throw new Error("no replica of web listed");
  await page.locator(`#replicas-table tr[data-replica="${web.id}"] a`).click();
  await until(page.waitForFunction((id) => document.querySelector("#logs-status").textContent.includes(id), web.id));
  await page.click("#logs-stop");

  step("reload: the token was kept, the page connects again");
  await load(() => page.reload());
  await until(page.waitForSelector("#conn.live"));
  await until(page.waitForSelector("#logs-replica option", { state: "attached" }));

  step("the server's address without the token: the page says how to get in");
  const bare = await browser.newContext({ ignoreHTTPSErrors });
  const p3 = watch(await bare.newPage(), "no token", [/\/v1\/watch$/, /\/v1\/nodes$/]);
  let asked = "";
  p3.on("dialog", (d) => { asked = d.message(); d.dismiss(); });
  await load(() => p3.goto(link.replace(/\?token=.*$/, "")));
  await until(p3.waitForFunction(() => document.querySelector("#conn").textContent === "not signed in"));
  const refused = await p3.textContent("#error-text");
  if (!refused.includes("?token=") || !/admin-token/.test(asked)) {
    throw new Error(`a page without its token said ${JSON.stringify(refused)} and asked ${JSON.stringify(asked)}`);
  }
  await p3.screenshot({ path: join(shots, "not-signed-in.png") });
  await bare.close();

  step("namespaces: the switcher of a cluster-wide token shows team-a's part");
  await page.click('nav a[data-view="cluster"]');
  await until(page.waitForSelector('#namespaces-table tr[data-namespace="team-a"]'));
  const quota = await page.textContent('#namespaces-table tr[data-namespace="team-a"] td:nth-child(2)');
  if (quota !== "1 / 5") throw new Error(`team-a's deployments against its quota show ${JSON.stringify(quota)}, not "1 / 5"`);
  await page.click('nav a[data-view="deployments"]');
  if (await page.isHidden("#ns-pick")) throw new Error("a cluster-wide token's page has no namespace switcher");
  await until(page.waitForSelector('tr[data-deployment="team-a/teamweb"]'));
  await until(page.selectOption("#ns-select", "team-a"));
  await until(page.waitForSelector('tr[data-deployment="hello"]', { state: "detached" }));
  await until(page.waitForSelector('tr[data-deployment="team-a/teamweb"]'));
  await page.screenshot({ path: join(shots, "namespace-team-a.png"), fullPage: true });
  await until(page.selectOption("#ns-select", ""));
  await until(page.waitForSelector('tr[data-deployment="hello"]'));

  step("namespaces: a token scoped to team-a sees team-a's deployment and not default's");
  const teamCtx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors });
  const p4 = watch(await teamCtx.newPage(), "scoped");
  await load(() => p4.goto(scopedLink));
  await until(p4.waitForSelector("#conn.live"));
  await until(p4.waitForFunction(() => document.querySelector("#ns-scoped").textContent === "namespace team-a"));
  if (!(await p4.isHidden("#ns-pick"))) throw new Error("a token scoped to team-a is offered the namespace switcher");
  await p4.click('nav a[data-view="deployments"]');
  await waitCounts(p4, "team-a/teamweb", "1/1/1");
  const shown = await p4.evaluate(() => [...document.querySelectorAll("#deployments-table tbody tr")].map((tr) => tr.dataset.deployment));
  if (shown.join() !== "team-a/teamweb") throw new Error(`a token of team-a is shown deployments ${JSON.stringify(shown)}`);
  await p4.click('nav a[data-view="replicas"]');
  const owners = await p4.evaluate(() => [...document.querySelectorAll("#replicas-table tbody tr")].map((tr) => tr.cells[1].textContent));
  if (!owners.length || owners.some((o) => o !== "team-a/teamweb")) throw new Error(`a token of team-a is shown replicas of ${JSON.stringify(owners)}`);
  await p4.click('nav a[data-view="events"]');
  const objects = await p4.evaluate(() => [...document.querySelectorAll("#events-table tbody tr")].map((tr) => tr.cells[1].textContent));
  const ours = (o) => ["deployment/team-a/", "job/team-a/", "replica/team-a-"].some((p) => o.startsWith(p)) || o === "namespace/team-a";
  if (!objects.some((o) => o === "deployment/team-a/teamweb") || !objects.every(ours)) {
    throw new Error(`a token of team-a is shown events about ${JSON.stringify(objects)}`);
  }
  await p4.click('nav a[data-view="jobs"]');
  await until(p4.waitForSelector('#jobs-table tr[data-job="team-a/teamjob"]'));
  const jobs = await p4.evaluate(() => [...document.querySelectorAll("#jobs-table tbody tr")].map((tr) => tr.dataset.job));
  if (jobs.join() !== "team-a/teamjob") throw new Error(`a token of team-a is shown jobs ${JSON.stringify(jobs)}`);
  await p4.click('nav a[data-view="cluster"]');
  await until(p4.waitForSelector('#namespaces-table tr[data-namespace="team-a"]'));
  const spaces = await p4.evaluate(() => [...document.querySelectorAll("#namespaces-table tbody tr")].map((tr) => tr.dataset.namespace));
  if (spaces.join() !== "team-a") throw new Error(`a token of team-a is shown namespaces ${JSON.stringify(spaces)}`);
  if (!(await p4.isHidden("#cluster-nodes"))) throw new Error("a token of team-a is shown the nodes' packing and charts");
  await p4.screenshot({ path: join(shots, "scoped-cluster.png"), fullPage: true });
  await teamCtx.close();

  step("phone width, dark mode, the link opened afresh");
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 }, colorScheme: "dark", isMobile: true, ignoreHTTPSErrors,
  });
  const p2 = await open(phone, "phone");
  await until(p2.waitForSelector('article.node[data-node="dev"]'));
  await p2.screenshot({ path: join(shots, "phone-dark-cluster.png"), fullPage: true });
  for (const view of ["deployments", "replicas", "jobs", "events", "logs"]) {
    await p2.click(`nav a[data-view="${view}"]`);
    const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error(`the ${view} view is ${overflow}px wider than a phone screen`);
  }
  await p2.click('nav a[data-view="deployments"]');
  await waitCounts(p2, "hello", "4/4/4");
  await p2.screenshot({ path: join(shots, "phone-dark-deployments.png"), fullPage: true });

  if (errors.length) throw new Error(`the page logged errors: ${errors.join(" | ")}`);
  console.log("ok");
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.message}`);
  if (errors.length) console.error(`page errors: ${errors.join(" | ")}`);
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
