#include "server/status_page.h"

namespace keel::server {

namespace {

constexpr std::string_view kHtml = R"KEEL(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>keel status</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#e3e6ec;
          --ok:#2e9d5b; --busy:#e29a1b; --bad:#d64545; --blue:#3a6fd8; --violet:#8a5cd1; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:baseline; gap:16px; padding:14px 22px; background:var(--ink); color:#fff; }
  header h1 { margin:0; font-size:20px; letter-spacing:.5px; }
  header .meta { color:#b9c0d0; font-size:13px; }
  #state { margin-left:auto; font-size:12px; padding:2px 8px; border-radius:10px; background:var(--ok); }
  #state.bad { background:var(--bad); }
  main { padding:18px 22px; display:grid; gap:16px; grid-template-columns:repeat(auto-fit, minmax(340px, 1fr)); }
  section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  section.wide { grid-column:1 / -1; }
  h2 { margin:0 0 10px; font-size:13px; text-transform:uppercase; letter-spacing:.6px; color:var(--mute); }
  .tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(120px, 1fr)); gap:10px; }
  .tile b { display:block; font-size:22px; font-variant-numeric:tabular-nums; }
  .tile span { color:var(--mute); font-size:12px; }
  canvas { width:100%; height:150px; display:block; }
  .legend { font-size:12px; color:var(--mute); margin-top:4px; }
  .legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin:0 4px 0 10px; vertical-align:-1px; }
  table { width:100%; border-collapse:collapse; font-size:13px; }
  th, td { text-align:left; padding:5px 6px; border-bottom:1px solid var(--line); vertical-align:top; }
  th { color:var(--mute); font-weight:600; }
  td.num { font-variant-numeric:tabular-nums; }
  .dot { display:inline-block; width:11px; height:11px; border-radius:50%; margin-right:3px; }
  .idle { background:var(--ok); } .busy { background:var(--busy); } .starting { background:#c5cad6; }
  .cause { font-weight:600; } .cause.trap, .cause.error { color:var(--bad); } .cause.deadline { color:var(--busy); }
  .cause.detached, .cause.withdrawn { color:var(--blue); }
  .msg { color:var(--mute); font-family:ui-monospace, monospace; font-size:12px; word-break:break-word; }
  .empty { color:var(--mute); font-style:italic; }
  #auth { display:none; padding:14px 22px; background:#fff3cd; }
  #auth input { width:320px; }
</style>
</head>
<body data-updates="0">
<header>
  <h1>keel</h1>
  <span class="meta" id="meta">connecting…</span>
  <span id="state">live</span>
</header>
<div id="auth">This service needs a bearer token:
  <input id="token" type="password" autocomplete="off"> <button id="save">Use token</button></div>
<main>
  <section class="wide">
    <h2>Now</h2>
    <div class="tiles">
      <div class="tile"><b id="t-rate">–</b><span>calls / s</span></div>
      <div class="tile"><b id="t-p50">–</b><span>p50 latency (ms)</span></div>
      <div class="tile"><b id="t-p99">–</b><span>p99 latency (ms)</span></div>
      <div class="tile"><b id="t-queued">–</b><span>queued</span></div>
      <div class="tile"><b id="t-running">–</b><span>running</span></div>
      <div class="tile"><b id="t-instances">–</b><span>instances</span></div>
      <div class="tile"><b id="t-inflight">–</b><span>HTTP calls in flight</span></div>
      <div class="tile"><b id="t-detached">–</b><span>detached (client left)</span></div>
    </div>
  </section>
  <section>
    <h2>Throughput</h2>
    <canvas id="c-throughput" data-samples="0"></canvas>
    <div class="legend"><i style="background:var(--blue)"></i>calls/s<i style="background:var(--ok)"></i>ok/s<i style="background:var(--violet)"></i>HTTP requests/s</div>
  </section>
  <section>
    <h2>Latency</h2>
    <canvas id="c-latency" data-samples="0"></canvas>
    <div class="legend"><i style="background:var(--blue)"></i>p50 ms<i style="background:var(--bad)"></i>p99 ms</div>
  </section>
  <section>
    <h2>Terminations by cause</h2>
    <canvas id="c-terminations" data-samples="0"></canvas>
    <div class="legend" id="cause-legend"></div>
  </section>
  <section class="wide">
    <h2>Pools and instances</h2>
    <table><thead><tr><th>module</th><th>digest</th><th>state policy</th><th>instances</th><th>queued</th><th>state</th></tr></thead>
      <tbody id="pools"></tbody></table>
    <div class="legend"><i class="idle"></i>idle<i class="busy"></i>busy<i class="starting"></i>starting / being replaced</div>
  </section>
  <section>
    <h2>Jobs</h2>
    <table><tbody id="jobs"></tbody></table>
  </section>
  <section class="wide">
    <h2>Nodes</h2>
    <table><thead><tr><th>node</th><th>alive</th><th>address</th><th>workers</th><th>last seen</th><th>started</th></tr></thead>
      <tbody id="nodes"></tbody></table>
  </section>
  <section class="wide">
    <h2>Recent abnormal terminations</h2>
    <table><thead><tr><th>time</th><th>call</th><th>module</th><th>export</th><th>cause</th><th>message</th></tr></thead>
      <tbody id="recent"></tbody></table>
  </section>
</main>
<script>
"use strict";
const CAUSES = [["trap", "#d64545"], ["deadline", "#e29a1b"], ["detached", "#3a6fd8"],
                ["cancelled", "#8a5cd1"], ["error", "#7a1f1f"], ["other", "#9aa1b1"]];
const $ = (id) => document.getElementById(id);
const fmt = (v, d) => (v === undefined || v === null) ? "–" : Number(v).toFixed(d);

(function initToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem("keel-token", decodeURIComponent(m[1])); history.replaceState(null, "", "/"); }
  $("save").onclick = () => { sessionStorage.setItem("keel-token", $("token").value); $("auth").style.display = "none"; poll(); };
  const legend = $("cause-legend");
  for (const [name, color] of CAUSES) {
    const i = document.createElement("i"); i.style.background = color;
    legend.append(i, document.createTextNode(name));
  }
})();

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? c : text("td", c));
  return tr;
}

// Canvas sized to its CSS box at the device's pixel ratio.
function surface(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function axes(ctx, w, h, max, unit) {
  ctx.strokeStyle = "#e3e6ec"; ctx.fillStyle = "#6b7385"; ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let k = 0; k <= 2; k++) {
    const y = 8 + (h - 24) * k / 2;
    ctx.beginPath(); ctx.moveTo(36, y); ctx.lineTo(w, y); ctx.stroke();
    const v = max * (1 - k / 2);
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2), 2, y + 4);
  }
  ctx.fillText(unit, 2, h - 2);
}

function lines(canvas, samples, series) {
  const { ctx, w, h } = surface(canvas);
  canvas.dataset.samples = samples.length;
  let max = 0;
  for (const s of samples) for (const [key] of series) max = Math.max(max, s[key] || 0);
  max = max > 0 ? max * 1.15 : 1;
  axes(ctx, w, h, max, "");
  // The newest sample at the right edge; a minute fills the width.
  const n = Math.max(samples.length, 60), x = (i) => 38 + (w - 40) * i / (n - 1);
  const y = (v) => 8 + (h - 24) * (1 - v / max);
  for (const [key, color] of series) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    samples.forEach((s, i) => { const px = x(i + n - samples.length), py = y(s[key] || 0); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  }
}

function stacked(canvas, samples) {
  const { ctx, w, h } = surface(canvas);
  canvas.dataset.samples = samples.length;
  let max = 0;
  for (const s of samples) max = Math.max(max, CAUSES.reduce((a, [k]) => a + (s[k] || 0), 0));
  max = max > 0 ? max * 1.15 : 1;
  axes(ctx, w, h, max, "");
  const n = Math.max(samples.length, 60), bw = (w - 40) / n;
  samples.forEach((s, i) => {
    let base = h - 16;
    for (const [key, color] of CAUSES) {
      const v = s[key] || 0; if (!v) continue;
      const bh = (h - 24) * v / max;
      ctx.fillStyle = color; ctx.fillRect(38 + (i + n - samples.length) * bw, base - bh, Math.max(bw - 1, 1), bh);
      base -= bh;
    }
  });
}

function render(st) {
  const last = st.series.length ? st.series[st.series.length - 1] : {};
  $("meta").textContent = `${st.listen} · ${st.workers} workers · up ${Math.floor(st.uptime_s)} s`;
  $("state").textContent = st.draining ? "draining" : "live";
  $("state").className = st.draining ? "bad" : "";
  $("t-rate").textContent = fmt(last.calls_per_s, 0);
  $("t-p50").textContent = fmt(last.p50_ms, 2);
  $("t-p99").textContent = fmt(last.p99_ms, 2);
  $("t-queued").textContent = st.runtime.queued;
  $("t-running").textContent = st.runtime.running;
  $("t-instances").textContent = st.runtime.instances_live;
  $("t-inflight").textContent = st.http.calls_in_flight;
  $("t-detached").textContent = st.runtime.detached;

  const pools = $("pools"); pools.replaceChildren();
  for (const p of st.pools) {
    const dots = document.createElement("td");
    const idle = Math.max(p.healthy - p.busy, 0), starting = Math.max(p.target - p.healthy, 0);
    for (const [count, cls] of [[p.busy, "busy"], [idle, "idle"], [starting, "starting"]]) {
      for (let i = 0; i < count; i++) dots.append(text("span", "", "dot " + cls));
    }
    const state = p.quarantined ? `quarantined ${Math.ceil(p.quarantine_remaining_ms / 1000)} s: ${p.quarantine_reason}` : "ok";
    const tr = row([p.module, text("td", p.digest.slice(0, 12), "msg"), p.state, dots, text("td", p.queued, "num"),
                    text("td", state, p.quarantined ? "cause error" : "")]);
    tr.dataset.module = p.module;
    pools.append(tr);
  }
  if (!st.pools.length) pools.append(row([text("td", "no modules loaded", "empty")]));

  const jobs = $("jobs"); jobs.replaceChildren();
  for (const [state, count] of Object.entries(st.jobs)) jobs.append(row([state, text("td", count, "num")]));

  const nodes = $("nodes"); nodes.replaceChildren();
  for (const n of st.nodes || []) {
    const alive = n.alive ? (n.draining ? "draining" : "alive") : (n.stopped ? "stopped" : "silent");
    const tr = row([n.self ? n.name + " (this node)" : n.name, text("td", alive, n.alive ? "" : "cause error"),
                    n.address, text("td", n.workers, "num"), n.last_seen.slice(11, 23), n.started_at.slice(0, 19)]);
    tr.dataset.node = n.name;
    nodes.append(tr);
  }

  const recent = $("recent"); recent.replaceChildren();
  for (const t of st.recent) {
    const tr = row([t.time.slice(11, 23), text("td", t.call_id, "num"), t.module, t.export,
                    text("td", t.cause, "cause " + t.cause), text("td", t.message, "msg")]);
    tr.dataset.cause = t.cause;
    recent.append(tr);
  }
  if (!st.recent.length) recent.append(row([text("td", "none", "empty")]));

  lines($("c-throughput"), st.series, [["calls_per_s", "#3a6fd8"], ["ok_per_s", "#2e9d5b"], ["requests_per_s", "#8a5cd1"]]);
  lines($("c-latency"), st.series, [["p50_ms", "#3a6fd8"], ["p99_ms", "#d64545"]]);
  stacked($("c-terminations"), st.series);
  document.body.dataset.updates = Number(document.body.dataset.updates) + 1;
}

async function poll() {
  const headers = {};
  const token = sessionStorage.getItem("keel-token");
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const res = await fetch("/v1/status", { headers, cache: "no-store" });
    if (res.status === 401) { $("auth").style.display = "block"; $("state").textContent = "needs token"; $("state").className = "bad"; return; }
    if (!res.ok) throw new Error("HTTP " + res.status);
    render(await res.json());
  } catch (e) {
    $("state").textContent = "offline"; $("state").className = "bad";
  }
}

poll();
setInterval(poll, 1000);
</script>
</body>
</html>
)KEEL";

}  // namespace

std::string_view StatusPageHtml() { return kHtml; }

}  // namespace keel::server
