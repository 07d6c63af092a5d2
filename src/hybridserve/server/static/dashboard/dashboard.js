// The hybridserve dashboard: polls /v1/dashboard/data every 2 s and draws it with uPlot.
// Health and SLOs come from /v1/health and /v1/slo when the server has them. With auth on,
// the page asks for a key with the read (or admin) scope and keeps it in sessionStorage.
"use strict";

const POLL_MS = 2000;
const KEEP = 150; // points per time-series chart (5 minutes at 2 s)
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const SOURCES = ["batch", "stream", "online", "cache"]; // fallback:* follow, in order seen

const charts = {}; // route -> {rates, latency, age, sources, history}
window.hsCharts = charts; // for the browser test and for poking at from the console
window.hsLast = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function fmt(v, digits = 2) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}

function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }

function fillTable(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const c of cells) {
      const td = el("td", c.attrs || {});
      td.textContent = c.text === undefined ? fmt(c) : c.text;
      tr.append(td);
    }
    return tr;
  }));
}

function cell(text, attrs = {}) { return { text, attrs }; }

// -- fetching ------------------------------------------------------------------------------

function headers() {
  const key = sessionStorage.getItem("hybridserve-key");
  return key ? { "X-API-Key": key } : {};
}

async function getJson(path) {
  const r = await fetch(path, { headers: headers(), cache: "no-store" });
  if (r.status === 404) return { missing: true };
  if (r.status === 503 && path === "/v1/health") return { body: await r.json() }; // critical
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    return { denied: body.error || r.statusText };
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return { body: await r.json() };
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const [data, health, slo] = await Promise.all([
      getJson("/v1/dashboard/data"), getJson("/v1/health"), getJson("/v1/slo"),
    ]);
    if (data.denied) {
      document.getElementById("login").hidden = false;
      error.hidden = false;
      error.textContent = data.denied;
      return;
    }
    document.getElementById("login").hidden = true;
    error.hidden = true;
    render(data.body, health.body || null, slo.body || null);
  } catch (exc) {
    error.hidden = false;
    error.textContent = String(exc);
  }
}

// -- rendering -----------------------------------------------------------------------------

function render(data, health, slo) {
  window.hsLast = { data, health, slo };
  const routes = document.getElementById("routes");
  for (const [name, route] of Object.entries(data.routes)) {
    let card = routes.querySelector(`[data-route="${CSS.escape(name)}"]`);
    if (!card) {
      card = routeCard(name);
      routes.append(card);
    }
    renderRoute(card, name, route, data.at, health, slo);
  }
  fillTable(document.querySelector("#breakers tbody"),
    Object.entries(data.breakers).sort().map(([dep, state]) =>
      [cell(dep), cell(state, { "data-state": state, "data-breaker": dep })]));
  fillTable(document.querySelector("#streams tbody"), data.streams.map((s) => [
    cell(s.stream), cell(s.error ? "error: " + s.error : fmt(s.route)),
    cell(fmt(s.lag), { "data-k": `stream.${s.stream}.lag`, class: "num" }),
    cell(fmt(s.pending), { class: "num" }),
    cell(fmt(s.events_per_s, 1), { class: "num" }),
    cell(fmt(s.dead_letters), { "data-k": `stream.${s.stream}.dead_letters`, class: "num" }),
    cell(fmt(s.consumers), { class: "num" }),
  ]));
  const runs = [];
  for (const [job, list] of Object.entries(data.batch_jobs)) {
    if (!list.length) runs.push([cell(job), cell("no runs yet"), "", "", "", "", "", ""]);
    for (const r of list) {
      runs.push([cell(job), cell(r.run_id), cell(r.status, { "data-state": r.status }),
        cell(fmt(r.model)), cell(fmt(r.rows), { "data-k": `batch.${job}.${r.run_id}.rows`, class: "num" }),
        cell(fmt(r.rows_per_s, 0), { class: "num" }), cell(fmt(r.rejected), { class: "num" }),
        cell(fmt(r.seconds, 2), { class: "num" })]);
    }
  }
  fillTable(document.querySelector("#batch tbody"), runs);
  renderHealth(health);
  document.getElementById("updated").textContent =
    "updated " + new Date(data.at * 1000).toLocaleTimeString() +
    ` · rates over ${fmt(data.rate_seconds, 1)} s · latency over ${fmt(data.window_seconds, 0)} s`;
}

function routeCard(name) {
  const card = el("section", { class: "card", "data-route": name });
  const title = el("h2");
  title.append(`route ${name} `, el("span", { class: "badge", "data-k": "health", "data-state": "unknown" }));
  const table = (cls, head) => {
    const t = el("table", { class: cls });
    t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))), el("tbody"));
    return t;
  };
  const grid = el("div", { class: "route-grid" });
  const left = el("div");
  left.append(
    el("h3", {}, "Models"), table("models", ["role", "model", "version", "traffic", "shadow agreement"]),
    el("h3", {}, "Answers by source"), table("answers", ["source", "total", "per s"]),
    el("h3", {}, "Cache hit rate"), table("cache", ["tier", "hits", "hit rate"]),
    el("h3", {}, "Fallbacks and errors"), table("fallbacks", ["what", "total"]),
    el("h3", {}, "SLO"), table("slo", ["objective", "target", "actual", "budget left", "burn 5m", "burn 1h", "burn 6h"]),
  );
  const right = el("div");
  right.append(
    el("h3", {}, "Answers per second"), el("div", { class: "chart rates" }),
    el("h3", {}, "Latency (total)"), el("div", { class: "chart latency" }),
    el("h3", {}, "Stages"), table("stages", ["stage", "p50 ms", "p99 ms", "budget ms", "count"]),
    el("h3", {}, "Age of served answers"), el("div", { class: "chart age" }),
  );
  grid.append(left, right);
  card.append(title, grid);
  charts[name] = { sources: [], history: { t: [], rates: {}, p50: [], p99: [], budget: [] } };
  return card;
}

function renderRoute(card, name, route, at, health, slo) {
  const q = (sel) => card.querySelector(sel);
  fillTable(q(".models tbody"), route.models.map((m) => [
    cell(m.role), cell(m.model), cell(String(m.version), { "data-k": `model.${m.role}.version` }),
    cell(m.percent === null || m.percent === undefined ? "–" : fmt(m.percent, 1) + " %"),
    cell(m.role === "shadow" ? pct(m.agreement) + ` of ${fmt(m.compared)}` : "–"),
  ]));
  fillTable(q(".answers tbody"), Object.entries(route.answers).map(([src, a]) => [
    cell(src), cell(fmt(a.total), { "data-k": `answers.${src}.total`, class: "num" }),
    cell(fmt(a.per_s, 2), { "data-k": `answers.${src}.per_s`, class: "num" }),
  ]));
  fillTable(q(".cache tbody"), Object.entries(route.cache).map(([tier, c]) => [
    cell(tier), cell(fmt(c.hits), { "data-k": `cache.${tier}.hits`, class: "num" }),
    cell(pct(c.hit_rate), { "data-k": `cache.${tier}.hit_rate`, class: "num" }),
  ]));
  const fb = [...Object.entries(route.fallbacks).map(([k, v]) => [cell("fallback " + k), cell(fmt(v), { "data-k": `fallbacks.${k}`, class: "num" })]),
    ...Object.entries(route.errors).map(([k, v]) => [cell("error " + k), cell(fmt(v), { "data-k": `errors.${k}`, class: "num" })])];
  fillTable(q(".fallbacks tbody"), fb.length ? fb : [[cell("none"), cell("")]]);
  fillTable(q(".stages tbody"), Object.entries(route.stages).filter(([, s]) => s.total_count > 0).map(([stage, s]) => [
    cell(stage), cell(fmt(s.p50_ms, 3), { "data-k": `stage.${stage}.p50_ms`, class: "num" }),
    cell(fmt(s.p99_ms, 3), { "data-k": `stage.${stage}.p99_ms`, class: "num", "data-over": String(!!s.over_budget) }),
    cell(fmt(s.budget_ms, 1), { "data-k": `stage.${stage}.budget_ms`, class: "num" }), cell(fmt(s.count), { class: "num" }),
  ]));
  renderRouteHealth(q('[data-k="health"]'), name, health);
  renderSlo(q(".slo tbody"), name, slo);
  drawRates(card, name, route, at);
  drawLatency(card, name, route, at);
  drawAge(card, name, route);
}

function push(list, value) { list.push(value); if (list.length > KEEP) list.shift(); }

function chartWidth(div) { return Math.max(320, div.clientWidth || 480); }

function drawRates(card, name, route, at) {
  const c = charts[name];
  const h = c.history;
  const seen = Object.keys(route.answers);
  const order = [...SOURCES.filter((s) => seen.includes(s)), ...seen.filter((s) => !SOURCES.includes(s)).sort()];
  push(h.t, at);
  for (const src of new Set([...order, ...Object.keys(h.rates)])) {
    if (!h.rates[src]) h.rates[src] = h.t.slice(0, -1).map(() => null);
    const a = route.answers[src];
    h.rates[src].push(a && a.per_s !== null ? a.per_s : null);
    if (h.rates[src].length > h.t.length) h.rates[src].shift();
  }
  const div = card.querySelector(".chart.rates");
  const sources = [...order, ...Object.keys(h.rates).filter((s) => !order.includes(s))];
  if (!c.rates || sources.join() !== c.sources.join()) {
    if (c.rates) c.rates.destroy();
    c.sources = sources;
    c.rates = new uPlot({
      width: chartWidth(div), height: 180,
      series: [{}, ...sources.map((s, i) => ({ label: s, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))],
      axes: [{}, { label: "answers/s", size: 60 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    }, [[]], div);
  }
  c.rates.setData([h.t.slice(), ...sources.map((s) => h.rates[s].slice())]);
}

function drawLatency(card, name, route, at) {
  const c = charts[name];
  const h = c.history;
  const total = route.stages.total || {};
  push(h.p50, total.p50_ms ?? null);
  push(h.p99, total.p99_ms ?? null);
  push(h.budget, total.budget_ms ?? null);
  const div = card.querySelector(".chart.latency");
  if (!c.latency) {
    c.latency = new uPlot({
      width: chartWidth(div), height: 180,
      series: [{}, { label: "p50 ms", stroke: COLORS[0], width: 2, spanGaps: true },
        { label: "p99 ms", stroke: COLORS[1], width: 2, spanGaps: true },
        { label: "budget ms", stroke: "#c62828", dash: [6, 4], width: 1, spanGaps: true }],
      axes: [{}, { label: "ms", size: 60 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    }, [[]], div);
  }
  c.latency.setData([h.t.slice(), h.p50.slice(), h.p99.slice(), h.budget.slice()]);
}

function ageLabel(le) {
  if (le === "+Inf") return "older";
  if (le < 60) return `≤${le}s`;
  if (le < 3600) return `≤${le / 60}m`;
  if (le < 86400) return `≤${le / 3600}h`;
  return `≤${le / 86400}d`;
}

function drawAge(card, name, route) {
  const c = charts[name];
  const buckets = route.age.buckets;
  if (!buckets.length) return;
  const div = card.querySelector(".chart.age");
  const labels = buckets.map((b) => ageLabel(b.le));
  if (!c.age) {
    c.age = new uPlot({
      width: chartWidth(div), height: 160,
      scales: { x: { time: false, range: [-0.5, labels.length - 0.5] }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [{}, { label: "answers", stroke: COLORS[2], fill: COLORS[2] + "aa", paths: uPlot.paths.bars({ size: [0.7] }) }],
      axes: [{ values: (u, splits) => splits.map((i) => labels[i] ?? ""), splits: () => labels.map((_, i) => i) },
        { label: "answers", size: 60 }],
      legend: { show: false },
    }, [[]], div);
  }
  c.age.setData([buckets.map((_, i) => i), buckets.map((b) => b.count)]);
}

// -- health and SLOs (when the server has /v1/health and /v1/slo) ---------------------------

function stateOf(obj) { return obj ? (obj.status || "unknown") : "unknown"; }

function reasonsOf(obj) { return obj && obj.reasons ? obj.reasons.join("; ") : ""; }

// /v1/health: {status, reasons, components: [{name: "route:fraud", kind, status, reasons}]}
function renderHealth(health) {
  const badge = document.getElementById("health");
  const card = document.getElementById("health-card");
  if (!health) { badge.dataset.state = "unknown"; badge.textContent = "health: n/a"; card.hidden = true; return; }
  const state = stateOf(health);
  badge.dataset.state = state;
  badge.textContent = "health: " + state;
  badge.title = reasonsOf(health);
  card.hidden = false;
  const rows = [[cell("service"), cell(state, { "data-state": state, "data-k": "health.service" }), cell(reasonsOf(health))]];
  for (const c of health.components || []) {
    rows.push([cell(c.name), cell(stateOf(c), { "data-state": stateOf(c), "data-k": `health.${c.name}` }), cell(reasonsOf(c))]);
  }
  fillTable(document.querySelector("#health-table tbody"), rows);
}

function renderRouteHealth(badge, name, health) {
  const route = health ? (health.components || []).find((c) => c.name === `route:${name}`) : null;
  const state = route ? stateOf(route) : "unknown";
  badge.dataset.state = state;
  badge.textContent = route ? state : "health n/a";
  badge.title = reasonsOf(route);
}

// /v1/slo: {routes: {NAME: {window_s, objectives: {SLI: {target, actual, budget_left,
// burn_rate: {"5m", "1h", "6h"}}}, cost: {currency, all: {per_1k}}}}}
function renderSlo(tbody, name, slo) {
  const mine = slo && slo.routes ? slo.routes[name] : null;
  const rows = [];
  for (const [sli, o] of Object.entries((mine && mine.objectives) || {})) {
    const burn = o.burn_rate || {};
    rows.push([cell(sli), cell(fmt(o.target, 4)),
      cell(fmt(o.actual, 4), { "data-k": `slo.${sli}.actual`, "data-state": o.compliant ? "healthy" : "degraded" }),
      cell(pct(o.budget_left), { "data-k": `slo.${sli}.budget_left` }),
      cell(fmt(burn["5m"], 2)), cell(fmt(burn["1h"], 2)), cell(fmt(burn["6h"], 2))]);
  }
  const cost = mine && mine.cost;
  if (cost && cost.all) {
    rows.push([cell("cost per 1k"), cell(""), cell(`${fmt(cost.all.per_1k, 6)} ${cost.currency || ""}`, { "data-k": "cost.per_1k" }), cell(""), cell(""), cell(""), cell("")]);
  }
  if (!rows.length) rows.push([cell(slo ? "no SLO declared" : "n/a"), cell(""), cell(""), cell(""), cell(""), cell(""), cell("")]);
  fillTable(tbody, rows);
}

// -- start ---------------------------------------------------------------------------------

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("hybridserve-key", document.getElementById("key").value);
  document.getElementById("key").value = "";
  poll();
});

poll();
setInterval(poll, POLL_MS);
