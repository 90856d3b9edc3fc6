// skiff dashboard. Plain JavaScript, no framework and no build step: the
// scheduler serves this file from its binary. Everything it shows comes from the
// server-sent events of GET /v1/watch (a snapshot after every change); actions
// call the same /v1/ API the CLI uses.
"use strict";

const HISTORY_MS = 5 * 60 * 1000; // how much usage history the charts keep
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

const $ = (sel) => document.querySelector(sel);
let snap = null; // the latest snapshot, as the namespace switcher filters it
let whole = null; // the latest snapshot as the server sent it
// Usage samples by key → [{t, cpu (cores), mem (bytes), cpuSec}]. Not named
// `history`: a top-level const of that name would hide window.history, which
// the token handling below needs.
const usage = { node: new Map(), replica: new Map() };

// ---- quantities and formatting ----

function parseCpu(q) {
  const s = String(q).trim();
  if (s.endsWith("m")) return Number(s.slice(0, -1));
  return Math.round(Number(s) * 1000);
}

function parseMem(q) {
  const s = String(q).trim();
  const units = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  for (const [u, f] of Object.entries(units)) {
    if (s.endsWith(u)) return Number(s.slice(0, -u.length)) * f;
  }
  return Number(s);
}

function fmtMem(b) {
  if (!isFinite(b) || b <= 0) return "0";
  const units = ["B", "Ki", "Mi", "Gi", "Ti"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (b >= 100 || i === 0 ? b.toFixed(0) : b.toFixed(1)) + units[i];
}

function fmtCpu(cores) {
  if (!isFinite(cores) || cores <= 0) return "0";
  const m = cores * 1000;
  if (cores >= 1) return cores.toFixed(2);
  return (m >= 10 ? m.toFixed(0) : m >= 1 ? m.toFixed(1) : m.toFixed(2)) + "m";
}

function fmtSpan(ms) {
  const s = Math.round(ms / 1000);
  return s >= 60 ? `-${Math.round(s / 60)}m` : `-${s}s`;
}

function fmtAge(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60 ? (s % 60) + "s" : "");
  if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
}

function colorOf(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function stateBadge(state) {
  return el("span", { class: "state " + state, text: state });
}

// ---- errors and the API ----

function showError(msg) {
  $("#error-text").textContent = msg;
  $("#error").hidden = false;
}
$("#error-close").addEventListener("click", () => { $("#error").hidden = true; });
// A fault in this script says so on the page, not only in the developer
// console: otherwise the page just stays at "connecting…".
window.addEventListener("error", (e) => showError(`the dashboard failed: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => showError(`the dashboard failed: ${e.reason && e.reason.message || e.reason}`));

// The API token: from `?token=` once (then kept in localStorage and taken out of
// the address bar), else what was kept; asked for when the server refuses it.
const TOKEN_KEY = "skiff-token";
{
  const given = new URLSearchParams(location.search).get("token");
  if (given) {
    localStorage.setItem(TOKEN_KEY, given);
    window.history.replaceState(null, "", location.pathname + location.hash);
  }
}
function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
function authHeaders(headers = {}) {
  return token() ? { ...headers, authorization: "Bearer " + token() } : headers;
}
const NOT_SIGNED_IN = "the server refused this page's API token: open the dashboard link `skiff dev` or `make run` printed " +
  "(it ends in ?token=…), or give the admin token (the server's DATA_DIR/admin-token) when asked";
function askToken() {
  const t = prompt("skiff API token (the server's DATA_DIR/admin-token, or one from `skiff token create --read-only`):");
  if (t && t.trim()) { localStorage.setItem(TOKEN_KEY, t.trim()); location.reload(); }
}

async function api(method, path, body, headers = {}) {
  let resp;
  try {
    resp = await fetch(path, { method, body, headers: authHeaders(headers) });
  } catch (e) {
    throw new Error(`cannot reach the skiff server: ${e.message}`);
  }
  const text = await resp.text();
  if (resp.status === 401) {
    // The server's own words are for the CLI ("pass --token or SKIFF_TOKEN").
    askToken();
    throw new Error(NOT_SIGNED_IN);
  }
  if (!resp.ok) {
    let msg = `server answered ${resp.status}`;
    try { msg = JSON.parse(text).error || msg; } catch { if (text.trim()) msg += ": " + text.trim(); }
    throw new Error(msg);
  }
  return text ? JSON.parse(text) : null;
}

// ---- views (hash routing, one visible at a time) ----

const VIEWS = ["cluster", "deployments", "replicas", "jobs", "events", "logs"];

function showView() {
  const want = location.hash.slice(1);
  const view = VIEWS.includes(want) ? want : "cluster";
  for (const v of VIEWS) {
    $("#view-" + v).hidden = v !== view;
    const link = document.querySelector(`nav a[data-view="${v}"]`);
    if (v === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  if (view === "logs") fillLogChoices();
  render();
}
window.addEventListener("hashchange", showView);

// ---- namespaces (#20) ----
// Objects go by key: NAME in namespace default, NS/NAME elsewhere (a job's
// replicas' owner is job:KEY). A token scoped to a namespace gets that
// namespace's part of the cluster only (snapshot.namespace says which); a
// cluster-wide one picks a namespace to show, or all of them.

function nsOf(key) {
  const k = String(key).replace(/^job:/, "");
  const i = k.indexOf("/");
  return i < 0 ? "default" : k.slice(0, i);
}
function plainName(key) {
  const i = key.indexOf("/");
  return i < 0 ? key : key.slice(i + 1);
}
// The API path of deployment `key` (its namespace's route), plus `rest`.
function deploymentPath(key, rest = "") {
  const ns = nsOf(key), name = encodeURIComponent(plainName(key));
  return (ns === "default" ? `/v1/deployments/${name}` : `/v1/namespaces/${encodeURIComponent(ns)}/deployments/${name}`) + rest;
}
// The namespace the page shows: the token's own, else the switcher's ("" = all).
function shownNamespace() {
  if (whole && whole.namespace) return whole.namespace;
  return $("#ns-select").value;
}

// An event's namespace (as the server's dashboard::event_namespace): its
// object's; a replica's deployment's (replica ids are flat, NS-NAME-xxxxxx);
// none for a node (the cluster's) or a replica that is gone.
function eventNamespace(s, object) {
  const i = object.indexOf("/");
  if (i < 0) return null;
  const kind = object.slice(0, i), key = object.slice(i + 1);
  if (kind === "node") return null;
  if (kind === "namespace") return key;
  if (kind === "replica") { const r = s.replicas.find((r) => r.id === key); return r ? nsOf(r.deployment) : null; }
  return nsOf(key);
}

function filtered(s) {
  const ns = shownNamespace();
  if (!ns) return s;
  const mine = (key) => nsOf(key) === ns;
  return {
    ...s,
    deployments: s.deployments.filter((d) => mine(d.name)),
    replicas: s.replicas.filter((r) => mine(r.deployment)),
    // A node's events are the cluster's, not a namespace's.
    events: s.events.filter((e) => eventNamespace(s, e.object) === ns),
    namespaces: (s.namespaces || []).filter((n) => n.name === ns),
  };
}

function fillNamespaces() {
  const scoped = whole.namespace;
  $("#ns-pick").hidden = !!scoped;
  $("#ns-scoped").hidden = !scoped;
  if (scoped) { $("#ns-scoped").textContent = "namespace " + scoped; return; }
  const sel = $("#ns-select");
  const names = (whole.namespaces || []).map((n) => n.name);
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (have.join() !== names.join()) {
    const current = sel.value;
    sel.replaceChildren(el("option", { value: "", text: "all" }), ...names.map((n) => el("option", { value: n, text: n })));
    sel.value = names.includes(current) ? current : "";
  }
}
$("#ns-select").addEventListener("change", () => {
  if (!whole) return;
  jobsAt = 0; // the jobs view asks its namespace's at once
  snap = filtered(whole);
  render();
});

// One namespace's use against its quota: "3 / 10", or "3" with no limit.
function quotaCell(td, used, limit, fmt = String, parse = Number) {
  td.textContent = limit == null ? fmt(used) : `${fmt(used)} / ${limit}`;
  td.classList.toggle("quota-full", limit != null && parse(used) >= parse(limit));
}

function renderNamespaces() {
  const list = snap.namespaces || [];
  syncRows($("#namespaces-table tbody"), list, (n) => n.name, (n) => {
    const tr = el("tr", { "data-namespace": n.name });
    for (let i = 0; i < 7; i++) tr.append(el("td"));
    return tr;
  }, (tr, n) => {
    const c = tr.cells, q = n.quota || {}, u = n.usage || {};
    c[0].textContent = n.name;
    quotaCell(c[1], u.deployments || 0, q.deployments);
    quotaCell(c[2], u.replicas || 0, q.replicas);
    quotaCell(c[3], u.cpu || "0", q.cpu, String, (v) => parseCpu(v));
    quotaCell(c[4], u.memory || "0", q.memory, String, (v) => parseMem(v));
    quotaCell(c[5], u.volumes || 0, q.volumes);
    c[6].textContent = n.isolation || "none";
  });
}

// ---- the live stream ----

function connect() {
  const conn = $("#conn");
  // EventSource cannot send headers: the stream takes the token in its query.
  const es = new EventSource("/v1/watch" + (token() ? "?token=" + encodeURIComponent(token()) : ""));
  es.addEventListener("snapshot", (ev) => {
    try {
      whole = JSON.parse(ev.data);
      fillNamespaces();
      snap = filtered(whole);
    } catch (e) {
      showError("unreadable snapshot from the server: " + e.message);
      return;
    }
    conn.textContent = "live";
    conn.className = "conn live";
    if (snap.node_history) seed(snap.node_history);
    record(snap);
    render();
  });
  es.addEventListener("error", (ev) => {
    if (ev.data) showError("the server could not build a snapshot: " + ev.data);
    conn.className = "conn down";
    conn.textContent = "disconnected; reconnecting…";
    if (es.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
    // A refused stream is closed for good: ask whether the token is the reason,
    // else open a new one.
    conn.textContent = "disconnected";
    api("GET", "/v1/nodes").then(
      () => setTimeout(connect, 2000),
      (e) => {
        showError(e.message);
        if (e.message === NOT_SIGNED_IN) conn.textContent = "not signed in";
        else setTimeout(connect, 5000);
      });
  });
}

// Accumulates usage samples: cpu as a rate from consecutive cpu-second counters.
function record(s) {
  const t = s.time_ms;
  const add = (map, key, cpuSec, mem) => {
    let h = map.get(key);
    if (!h) { h = []; map.set(key, h); }
    const prev = h[h.length - 1];
    let cpu = 0;
    if (prev && t > prev.t && cpuSec >= prev.cpuSec) cpu = (cpuSec - prev.cpuSec) / ((t - prev.t) / 1000);
    else if (prev) cpu = prev.cpu;
    if (prev && t === prev.t) return;
    h.push({ t, cpu, mem, cpuSec });
    while (h.length && h[0].t < t - HISTORY_MS) h.shift();
  };
  const live = new Set();
  for (const n of s.nodes) { add(usage.node, n.name, n.cpu_seconds, n.memory_bytes); live.add("n/" + n.name); }
  for (const r of s.replicas) { add(usage.replica, r.id, r.cpu_seconds, r.memory_bytes); live.add("r/" + r.id); }
  for (const k of usage.node.keys()) if (!live.has("n/" + k)) usage.node.delete(k);
  for (const k of usage.replica.keys()) if (!live.has("r/" + k)) usage.replica.delete(k);
}

// The server keeps a few minutes of per-node totals: a page opened now starts
// with them instead of empty charts.
function seed(nodeHistory) {
  for (const [name, samples] of Object.entries(nodeHistory)) {
    if (usage.node.has(name)) continue;
    const h = [];
    for (const [t, cpuSec, mem] of samples) {
      const prev = h[h.length - 1];
      const cpu = prev && t > prev.t && cpuSec >= prev.cpuSec ? (cpuSec - prev.cpuSec) / ((t - prev.t) / 1000) : 0;
      h.push({ t, cpu, mem, cpuSec });
    }
    usage.node.set(name, h);
  }
}

function latest(map, key) {
  const h = map.get(key);
  return h && h.length ? h[h.length - 1] : { cpu: 0, mem: 0 };
}

function render() {
  if (!snap) return;
  const view = document.body.dataset.view;
  if (view === "cluster") renderCluster();
  if (view === "deployments") renderDeployments();
  if (view === "replicas") renderReplicas();
  if (view === "jobs") renderJobs();
  if (view === "events") renderEvents();
  if (view === "logs") fillLogChoices();
}

// ---- cluster ----

function meter(label, used, alloc, cap, fmt) {
  const pct = (v) => cap > 0 ? Math.min(100, (v / cap) * 100).toFixed(1) + "%" : "0%";
  const bar = el("div", { class: "bar", role: "img", "aria-label": `${label}: ${fmt(alloc)} requested, ${fmt(used)} used of ${fmt(cap)}` },
    el("div", { class: "alloc", style: `width:${pct(alloc)}` }),
    el("div", { class: "used", style: `width:${pct(used)}` }));
  return el("div", { class: "meter" }, el("span", { text: `${label} ${fmt(used)} used · ${fmt(alloc)} requested / ${fmt(cap)}` }), bar);
}

function renderCluster() {
  renderNamespaces();
  // Nodes are the cluster's: a token scoped to a namespace gets none.
  $("#cluster-nodes").hidden = !!snap.namespace;
  const nodes = snap.nodes;
  const ready = nodes.filter((n) => n.state === "ready").length;
  $("#cluster-summary").textContent = snap.namespace
    ? `namespace ${snap.namespace} · ${snap.deployments.length} deployments · ${snap.replicas.length} replicas`
    : `${nodes.length} node${nodes.length === 1 ? "" : "s"} (${ready} ready) · ${snap.deployments.length} deployments · ${snap.replicas.length} replicas`;
  const box = $("#nodes");
  box.replaceChildren(...nodes.map((n) => {
    const u = latest(usage.node, n.name);
    const capCpu = parseCpu(n.capacity.cpu) / 1000, capMem = parseMem(n.capacity.memory);
    const allocCpu = parseCpu(n.allocated.cpu) / 1000, allocMem = parseMem(n.allocated.memory);
    return el("article", { class: "card node", "data-node": n.name, "aria-label": "node " + n.name },
      el("h4", {}, el("span", { text: n.name }), stateBadge(n.state),
        ...(n.drain ? [stateBadge(n.drain.done ? "drained" : "draining")] : n.unschedulable ? [stateBadge("cordoned")] : [])),
      el("div", { class: "muted", text: `${n.replicas} replicas · ${(n.runtimes || []).join(", ")} · ${n.address}` }),
      ...(n.drain && n.drain.message ? [el("div", { class: "muted", text: "drain: " + n.drain.message })] : []),
      meter("CPU", u.cpu, allocCpu, capCpu, fmtCpu),
      meter("Memory", n.memory_bytes, allocMem, capMem, fmtMem),
      el("div", { class: "labels" }, ...Object.entries(n.labels || {}).map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }))));
  }));
  if (!nodes.length) {
    box.replaceChildren(el("p", { class: "muted", text: snap.namespace
      ? `Nodes are the cluster's: this token sees namespace ${snap.namespace} only.`
      : "No nodes have joined yet: start one with `skiff node`." }));
  }

  // Packing: every placed replica as a block sized by its memory request.
  const reqMem = new Map(snap.deployments.map((d) => [d.name, parseMem(d.spec.resources.memory)]));
  const deploys = new Set();
  const rows = nodes.map((n) => {
    const cap = parseMem(n.capacity.memory) || 1;
    const mine = snap.replicas.filter((r) => r.node === n.name && !["pending"].includes(r.state));
    const blocks = mine.map((r) => {
      deploys.add(r.deployment);
      const w = ((reqMem.get(r.deployment) || 0) / cap) * 100;
      return el("span", { style: `width:${w.toFixed(2)}%;background:${colorOf(r.deployment)}`, title: `${r.id} (${r.deployment}, ${r.state})` });
    });
    return el("div", { class: "pack-row" },
      el("div", { class: "pack-name", text: n.name }),
      el("div", { class: "pack-bar", role: "img", "aria-label": `${n.name}: ${mine.length} replicas` }, ...blocks));
  });
  const legend = el("div", { class: "legend" }, ...[...deploys].sort().map((d) => el("span", {}, el("i", { style: `background:${colorOf(d)}` }), d)));
  $("#packing").replaceChildren(...rows, legend);

  chart($("#chart-node-cpu"), usage.node, "cpu", fmtCpu);
  chart($("#chart-node-mem"), usage.node, "mem", fmtMem);
}

// ---- charts: inline SVG polylines of the accumulated samples ----

function chart(box, map, field, fmt) {
  const W = 480, H = 160, L = 44, B = 16;
  const series = [...map.entries()].filter(([, h]) => h.length > 0).slice(0, 10);
  const now = snap ? snap.time_ms : Date.now();
  // The window grows with the history the page has seen, from 1 to 5 minutes,
  // so that a freshly opened page does not squeeze its lines into the corner.
  let first = now;
  for (const [, h] of series) if (h.length) first = Math.min(first, h[0].t);
  const span = Math.min(HISTORY_MS, Math.max(60 * 1000, now - first));
  const t0 = now - span;
  let max = 0;
  for (const [, h] of series) for (const p of h) max = Math.max(max, p[field]);
  if (max <= 0) max = field === "cpu" ? 0.01 : 1024 * 1024;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${field === "cpu" ? "CPU" : "Memory"} over the last ${fmtSpan(span).slice(1)}; peak ${fmt(max)}`);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    svg.append(e);
    return e;
  };
  add("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" });
  add("line", { x1: L, y1: 4, x2: L, y2: H - B, class: "axis" });
  add("text", { x: 2, y: 12 }, fmt(max));
  add("text", { x: 2, y: H - B }, "0");
  add("text", { x: L, y: H - 2 }, fmtSpan(span));
  add("text", { x: W - 24, y: H - 2 }, "now");
  const x = (t) => L + ((t - t0) / span) * (W - L);
  const y = (v) => H - B - (v / max) * (H - B - 6);
  series.forEach(([key, h], i) => {
    const pts = h.map((p) => `${x(p.t).toFixed(1)},${y(p[field]).toFixed(1)}`).join(" ");
    const line = add("polyline", { points: pts, fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 2 });
    const title = document.createElementNS(ns, "title");
    title.textContent = `${key}: ${fmt(h[h.length - 1][field])}`;
    line.append(title);
  });
  const legend = el("div", { class: "legend" }, ...series.map(([k, h], i) => el("span", {}, el("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), `${k} ${fmt(h[h.length - 1][field])}`)));
  box.replaceChildren(svg, legend);
}

// ---- deployments ----

// Updates a table body in place, row by key, so that an input someone is typing
// in (a scale count) keeps its value and focus across live updates.
function syncRows(tbody, items, key, create, update) {
  const existing = new Map([...tbody.rows].map((tr) => [tr.dataset.key, tr]));
  const wanted = [];
  for (const item of items) {
    const k = key(item);
    let tr = existing.get(k);
    if (!tr) { tr = create(item); tr.dataset.key = k; }
    update(tr, item);
    existing.delete(k);
    wanted.push(tr);
  }
  for (const tr of existing.values()) tr.remove();
  wanted.forEach((tr, i) => { if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null); });
}

function renderDeployments() {
  const tbody = $("#deployments-table tbody");
  $("#deployments-empty").hidden = snap.deployments.length > 0;
  syncRows(tbody, snap.deployments, (d) => d.name, (d) => {
    const tr = el("tr", { "data-deployment": d.name });
    for (let i = 0; i < 10; i++) tr.append(el("td"));
    tr.cells[1].className = "desired-count";
    tr.cells[2].className = "ready-count";
    tr.cells[3].className = "available-count";
    const input = el("input", { type: "number", min: "0", max: "10000", "aria-label": `replicas of ${d.name}`, class: "scale-input", value: String(d.replicas) });
    const scaleBtn = el("button", { type: "button", class: "scale-btn", text: "Scale" });
    const backBtn = el("button", { type: "button", class: "rollback-btn", text: "Roll back" });
    const delBtn = el("button", { type: "button", class: "danger delete-btn", text: "Delete" });
    backBtn.addEventListener("click", () => rollback(d.name));
    scaleBtn.addEventListener("click", () => scale(d.name, input, scaleBtn));
    // A count being typed is the user's until sent (or Escape): live updates
    // must not overwrite it, even once focus has moved to the Scale button.
    input.addEventListener("input", () => { input.dataset.dirty = "1"; });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") scale(d.name, input, scaleBtn);
      if (e.key === "Escape") { delete input.dataset.dirty; renderDeployments(); }
    });
    delBtn.addEventListener("click", () => remove(d.name));
    tr.append(el("td", {}, el("div", { class: "actions" }, input, scaleBtn, backBtn, delBtn)));
    return tr;
  }, (tr, d) => {
    const s = d.status || {};
    const c = tr.cells;
    c[0].textContent = d.name;
    // Scaled to zero when idle: the name stays routable and the next request
    // starts a replica (scale_to_zero, or autoscale with min 0).
    const zero = d.replicas === 0 && (d.scale_to_zero || (d.autoscale && d.autoscale.min === 0));
    c[1].textContent = zero ? "0 (scaled to zero)" : d.replicas;
    c[1].classList.toggle("scaled-to-zero", !!zero);
    if (zero) c[1].title = "No request for a while: the next request starts a replica"; else c[1].removeAttribute("title");
    // An older server counts no ready/available: show "—" rather than 0.
    c[2].textContent = s.ready ?? "—";
    c[3].textContent = s.available ?? "—";
    for (const [cell, n] of [[c[2], s.ready], [c[3], s.available]]) cell.classList.toggle("short", n != null && n < d.replicas);
    c[4].textContent = s.pending || 0;
    c[5].textContent = s.failed || 0;
    c[6].textContent = s.restarts || 0;
    c[7].textContent = d.revision;
    // Rollouts (issue 4) may be absent from an older server's answers.
    const ro = d.rollout;
    c[8].textContent = ro ? (ro.paused ? `${ro.state} (paused)` : String(ro.state)) : "—";
    // A canary (#18): the weight split and both revisions' last judged figures.
    const cn = ro && ro.canary;
    if (cn && ro.state === "progressing") {
      const fig = (f) => f && f.requests ? `rev ${f.revision}: ${(100 * f.errors / f.requests).toFixed(1)}% errors, p99 ${f.p99_ms} ms` : `rev ${f ? f.revision : "?"}: —`;
      c[8].textContent += ` · canary ${cn.weight}% / stable ${100 - cn.weight}% · ${fig(cn.canary)} · ${fig(cn.stable)}`;
    }
    if (ro && ro.message) c[8].title = ro.message; else c[8].removeAttribute("title");
    c[9].textContent = `${d.spec.resources.cpu} cpu, ${d.spec.resources.memory}`;
    tr.querySelector(".rollback-btn").disabled = d.revision <= 1;
    const input = tr.querySelector(".scale-input");
    if (document.activeElement !== input && !input.dataset.dirty) input.value = String(d.replicas);
  });
}

async function scale(name, input, btn) {
  const value = input.value;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) { showError(`replicas must be a whole number of at least 0, not ${JSON.stringify(value)}`); return; }
  btn.disabled = true;
  try {
    await api("POST", deploymentPath(name, "/scale"), JSON.stringify({ replicas: n }), { "content-type": "application/json" });
    delete input.dataset.dirty;
    $("#error").hidden = true;
  } catch (e) {
    showError(`scaling ${name}: ${e.message}`);
  } finally {
    btn.disabled = false;
  }
}

function confirmDialog(text, action = "Delete") {
  const dlg = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = action;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "cancel";
    dlg.showModal();
    $("#confirm-cancel").focus();
  });
}

async function rollback(name) {
  if (!(await confirmDialog(`Roll ${name} back to its previous revision? Its replicas are replaced.`, "Roll back"))) return;
  try {
    await api("POST", deploymentPath(name, "/rollback"), "{}", { "content-type": "application/json" });
  } catch (e) {
    showError(`rolling back ${name}: ${e.message}`);
  }
}

async function remove(name) {
  if (!(await confirmDialog(`Delete deployment ${name}? Its replicas are stopped.`))) return;
  try {
    await api("DELETE", deploymentPath(name));
  } catch (e) {
    showError(`deleting ${name}: ${e.message}`);
  }
}

// The deploy form runs either a .wasm file (uploaded) or an image imported with
// `skiff image import` (named; the server pins it to its digest).
function deploySource() {
  return $("#deploy-source-image").checked ? "image" : "wasm";
}

function showDeploySource() {
  const image = deploySource() === "image";
  $("#deploy-file-field").hidden = image;
  $("#deploy-file").required = !image;
  $("#deploy-image-field").hidden = !image;
  $("#deploy-image").required = image;
  if (image) fillImageChoices();
}
for (const radio of document.querySelectorAll('#deploy-form input[name="source"]')) {
  radio.addEventListener("change", showDeploySource);
}

// Suggestions for the image field: what `skiff image ls` lists. Failing to list
// them costs only the suggestions; the name can still be typed.
async function fillImageChoices() {
  try {
    const images = await api("GET", "/v1/images");
    $("#deploy-images").replaceChildren(...images.map((i) => el("option", { value: `${i.name}:${i.tag}` })));
  } catch (e) {
    $("#deploy-status").textContent = `cannot list the imported images: ${e.message}`;
  }
}

// Uploads the chosen .wasm unless the server has it; answers its workload.
async function uploadWasm(status) {
  const file = $("#deploy-file").files[0];
  if (!file) throw new Error("choose a .wasm file to deploy");
  status.textContent = "hashing…";
  const bytes = new Uint8Array(await file.arrayBuffer());
  const digest = "sha256:" + (await sha256Hex(bytes));
  // Upload only what the server lacks (as `skiff deploy` does).
  const have = await fetch(`/v1/blobs/${digest}`, { method: "HEAD", headers: authHeaders() }).then((r) => r.ok, () => false);
  if (!have) {
    status.textContent = "uploading…";
    await api("PUT", `/v1/blobs/${digest}`, bytes, { "content-type": "application/octet-stream" });
  }
  return { wasm: digest };
}

$("#deploy-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("#deploy-status");
  const name = $("#deploy-name").value.trim();
  $("#deploy-submit").disabled = true;
  try {
    let workload;
    if (deploySource() === "image") {
      const image = $("#deploy-image").value.trim();
      if (!image) throw new Error("name an imported image (`skiff image ls` lists them)");
      workload = { image };
    } else {
      workload = await uploadWasm(status);
    }
    status.textContent = "applying…";
    const req = {
      replicas: Number($("#deploy-replicas").value),
      spec: {
        workload,
        resources: { cpu: $("#deploy-cpu").value.trim(), memory: $("#deploy-memory").value.trim() },
        restart: $("#deploy-restart").value,
      },
    };
    // Into the namespace shown (default when all are).
    const key = shownNamespace() && shownNamespace() !== "default" ? `${shownNamespace()}/${name}` : name;
    const resp = await api("PUT", deploymentPath(key), JSON.stringify(req), { "content-type": "application/json" });
    status.textContent = `deployment ${name}: ${resp.outcome}` + (resp.warnings && resp.warnings.length ? ` (${resp.warnings.join("; ")})` : "");
    $("#error").hidden = true;
  } catch (e) {
    status.textContent = "";
    showError(`deploying ${name}: ${e.message}`);
  } finally {
    $("#deploy-submit").disabled = false;
  }
});

// crypto.subtle exists only on secure origins (https or localhost); a dashboard
// reached over plain http on another host hashes with this instead.
async function sha256Hex(bytes) {
  if (window.crypto && crypto.subtle) {
    const d = await crypto.subtle.digest("SHA-256", bytes);
    return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }
  return sha256Fallback(bytes);
}

function sha256Fallback(msg) {
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
    0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
    0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
    0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
  const H = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const len = msg.length;
  const padded = new Uint8Array(((len + 9 + 63) >> 6) << 6);
  padded.set(msg);
  padded[len] = 0x80;
  const dv = new DataView(padded.buffer);
  dv.setUint32(padded.length - 8, Math.floor(len / 0x20000000));
  dv.setUint32(padded.length - 4, (len << 3) >>> 0);
  const W = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = dv.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(W[i - 15], 7) ^ rotr(W[i - 15], 18) ^ (W[i - 15] >>> 3);
      const s1 = rotr(W[i - 2], 17) ^ rotr(W[i - 2], 19) ^ (W[i - 2] >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) >>> 0;
      const S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      h = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
  }
  return [...H].map((x) => x.toString(16).padStart(8, "0")).join("");
}

// ---- replicas ----

function renderReplicas() {
  const tbody = $("#replicas-table tbody");
  $("#replicas-empty").hidden = snap.replicas.length > 0;
  const now = snap.time_ms;
  syncRows(tbody, snap.replicas, (r) => r.id, (r) => {
    const tr = el("tr", { "data-replica": r.id });
    for (let i = 0; i < 8; i++) tr.append(el("td"));
    tr.append(el("td", {}, el("a", { href: `#logs`, class: "logs-link", text: "logs", onclick: () => { pendingLog = r.id; } })));
    return tr;
  }, (tr, r) => {
    const u = latest(usage.replica, r.id);
    const c = tr.cells;
    c[0].textContent = r.id;
    c[1].textContent = r.deployment;
    c[2].replaceChildren(stateBadge(r.state));
    if (r.reason) c[2].title = r.reason; else c[2].removeAttribute("title");
    c[3].textContent = r.node || "—";
    c[4].textContent = r.restarts;
    c[5].textContent = fmtAge(now - r.created_ms);
    c[6].textContent = fmtCpu(u.cpu);
    c[7].textContent = fmtMem(r.memory_bytes);
    // A replica on no node yet has no logs; the link would lead nowhere.
    c[8].querySelector(".logs-link").hidden = !r.node;
  });
  chart($("#chart-replica-cpu"), usage.replica, "cpu", fmtCpu);
  chart($("#chart-replica-mem"), usage.replica, "mem", fmtMem);
}

// ---- events ----

function renderEvents() {
  const events = [...snap.events].reverse();
  syncRows($("#events-table tbody"), events, (e) => String(e.id), () => {
    const tr = el("tr");
    for (let i = 0; i < 4; i++) tr.append(el("td"));
    tr.cells[3].className = "msg";
    return tr;
  }, (tr, e) => {
    const c = tr.cells;
    c[0].textContent = new Date(e.time_ms).toLocaleTimeString();
    c[1].textContent = e.object;
    c[2].textContent = e.reason;
    c[3].textContent = e.message;
  });
}

// ---- logs: tails one replica through the scheduler's log proxy ----

let pendingLog = null;
let logAbort = null;

function fillLogChoices() {
  if (!snap) return;
  const sel = $("#logs-replica");
  const current = pendingLog || sel.value;
  const ids = snap.replicas.filter((r) => r.node).map((r) => `${r.deployment}/${r.id}`);
  const have = [...sel.options].map((o) => o.value);
  if (have.join() !== ids.join()) {
    sel.replaceChildren(...ids.map((v) => el("option", { value: v, text: v })));
  }
  if (pendingLog) {
    const match = ids.find((v) => v.endsWith("/" + pendingLog));
    pendingLog = null;
    if (match) { sel.value = match; startTail(); return; }
  }
  if (current && ids.includes(current)) sel.value = current;
}

async function startTail() {
  stopTail();
  const value = $("#logs-replica").value;
  if (!value) { showError("no replica is on a node yet, so there are no logs to tail"); return; }
  // "KEY/ID": the deployment's key may hold a "/" itself (NS/NAME).
  const cut = value.lastIndexOf("/");
  const deployment = value.slice(0, cut), replica = value.slice(cut + 1);
  const out = $("#logs-output");
  out.textContent = "";
  const ctrl = new AbortController();
  logAbort = ctrl;
  $("#logs-stop").disabled = false;
  $("#logs-status").textContent = `tailing ${replica}`;
  try {
    const url = deploymentPath(deployment, `/logs?follow=true&tail=200&replica=${encodeURIComponent(replica)}`);
    const resp = await fetch(url, { signal: ctrl.signal, headers: authHeaders() });
    if (!resp.ok) {
      let msg = `server answered ${resp.status}`;
      try { msg = (await resp.json()).error || msg; } catch { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { value: chunk, done } = await reader.read();
      if (done) break;
      const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 20;
      out.append(dec.decode(chunk, { stream: true }));
      // Keep the page light: at most ~200 KB of text.
      if (out.textContent.length > 200000) out.textContent = out.textContent.slice(-150000);
      if (atBottom) out.scrollTop = out.scrollHeight;
    }
    $("#logs-status").textContent = `${replica}: the log stream ended`;
  } catch (e) {
    if (e.name !== "AbortError") showError(`logs of ${replica}: ${e.message}`);
  } finally {
    if (logAbort === ctrl) { logAbort = null; $("#logs-stop").disabled = true; }
  }
}

function stopTail() {
  if (logAbort) { logAbort.abort(); logAbort = null; }
  $("#logs-stop").disabled = true;
  $("#logs-status").textContent = "";
}

$("#logs-form").addEventListener("submit", (ev) => { ev.preventDefault(); startTail(); });
$("#logs-stop").addEventListener("click", stopTail);

// ---- jobs and crons: read from /v1/jobs and /v1/crons (not in the snapshot),
// at most once a second while the view is shown ----

let jobsAt = 0;
let jobsBusy = false;
const failedIndices = new Map(); // job name -> "3, 7-9"

function ranges(list) {
  const v = [...new Set(list)].sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < v.length; i++) {
    const start = v[i];
    while (i + 1 < v.length && v[i + 1] === v[i] + 1) i++;
    out.push(start === v[i] ? String(start) : `${start}-${v[i]}`);
  }
  return out.join(", ");
}

function when(ms) {
  if (!ms) return "—";
  const d = ms - Date.now();
  return d >= 0 ? "in " + fmtAge(d) : fmtAge(-d) + " ago";
}

// The API path of namespace `ns`'s `kind` (jobs, crons), plus `rest`.
function nsPath(ns, kind, rest = "") {
  return `/v1/namespaces/${encodeURIComponent(ns)}/${kind}${rest}`;
}
// Jobs and crons as the page keys objects (#20): NAME in default, NS/NAME elsewhere.
function keyed(o) {
  const ns = o.namespace || "default";
  return { ...o, ns, plain: o.name, name: ns === "default" ? o.name : `${ns}/${o.name}` };
}

async function renderJobs() {
  // Jobs and crons are namespaced (#20): those of the namespace shown (a
  // scoped token's own), or of every namespace the token sees.
  if (jobsBusy || Date.now() - jobsAt < 1000) return;
  const one = shownNamespace();
  const spaces = one ? [one] : (whole.namespaces || []).map((n) => n.name);
  jobsBusy = true;
  try {
    const lists = await Promise.all(spaces.map((ns) =>
      Promise.all([api("GET", nsPath(ns, "jobs")), api("GET", nsPath(ns, "crons"))])));
    if (shownNamespace() !== one) return; // switched meanwhile: the next render asks again
    const jobs = lists.flatMap(([j]) => j).map(keyed);
    const crons = lists.flatMap(([, c]) => c).map(keyed);
    jobsAt = Date.now();
    jobs.sort((a, b) => b.created_ms - a.created_ms);
    // Failed indices need a job's runs: only for jobs with failures, a few at a time.
    for (const j of jobs.filter((j) => j.failed > 0 && !failedIndices.has(j.name + "@" + j.failed)).slice(0, 10)) {
      const d = await api("GET", nsPath(j.ns, "jobs", "/" + encodeURIComponent(j.plain)));
      failedIndices.set(j.name + "@" + j.failed, ranges(d.runs.filter((r) => r.outcome === "failed").map((r) => r.index)));
    }
    $("#jobs-empty").hidden = jobs.length > 0;
    syncRows($("#jobs-table tbody"), jobs, (j) => j.name, (j) => {
      const tr = el("tr", { "data-job": j.name });
      for (let i = 0; i < 8; i++) tr.append(el("td"));
      tr.cells[7].className = "msg";
      return tr;
    }, (tr, j) => {
      const c = tr.cells;
      const total = j.spec.completions;
      const pct = total > 0 ? ((j.succeeded / total) * 100).toFixed(1) + "%" : "0%";
      c[0].textContent = j.name;
      c[1].replaceChildren(stateBadge(j.state));
      c[2].replaceChildren(el("div", { class: "meter" },
        el("span", { text: `${j.succeeded}/${total}` }),
        el("div", { class: "bar", role: "img", "aria-label": `${j.succeeded} of ${total} completions` },
          el("div", { class: "used", style: `width:${pct}` }))));
      c[3].textContent = j.active;
      c[4].textContent = j.failed;
      c[5].textContent = j.failed > 0 ? (failedIndices.get(j.name + "@" + j.failed) || "…") : "—";
      c[6].textContent = fmtAge(Date.now() - j.created_ms);
      c[7].textContent = j.reason || "";
    });
    $("#crons-empty").hidden = crons.length > 0;
    syncRows($("#crons-table tbody"), crons, (c) => c.name, () => {
      const tr = el("tr");
      for (let i = 0; i < 6; i++) tr.append(el("td"));
      return tr;
    }, (tr, cr) => {
      const c = tr.cells;
      c[0].textContent = cr.name;
      c[1].textContent = `${cr.spec.schedule} (${cr.spec.time_zone})`;
      c[2].textContent = cr.spec.concurrency_policy + (cr.spec.suspend ? ", suspended" : "");
      c[3].textContent = when(cr.last_scheduled_ms);
      c[4].textContent = cr.last_job ? (cr.ns === "default" ? cr.last_job : `${cr.ns}/${cr.last_job}`) : "—";
      c[5].textContent = cr.spec.suspend ? "suspended" : when(cr.next_ms);
    });
  } catch (e) {
    showError(e.message);
  } finally {
    jobsBusy = false;
  }
}

// ---- start ----

showView();
connect();
// Ages and "now" on the charts advance even when nothing changes.
setInterval(() => { if (snap) { snap.time_ms += 1000; render(); } }, 1000);
