// sluice's dashboard: one EventSource on /events, everything drawn with
// textContent (hostnames and paths come from clients: never HTML).
"use strict";

const keep = 300;
let history = [];

const series = [
  { key: "requests", label: "requests", color: "var(--req)" },
  { key: "hit", label: "hit", color: "var(--hit)" },
  { key: "miss", label: "miss", color: "var(--miss)" },
  { key: "refused", label: "refused", color: "var(--refused)" },
  { key: "over_budget", label: "over budget", color: "var(--over)" },
];

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (v >= 100 || Number.isInteger(v)) return Math.round(v).toString();
  return v.toFixed(1);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function pct(r) { return (r * 100).toFixed(1) + "%"; }

// Times read as sluice status prints them: local, 24-hour.
function two(n) { return String(n).padStart(2, "0"); }
function clock(d, seconds) { return two(d.getHours()) + ":" + two(d.getMinutes()) + (seconds ? ":" + two(d.getSeconds()) : ""); }
function time(s) {
  const d = new Date(s);
  return isNaN(d) ? "" : clock(d, true);
}
function datetime(s) {
  const d = new Date(s);
  return isNaN(d) ? "" : d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " + clock(d, true);
}

function duration(secs) {
  secs = Math.floor(secs);
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60;
  return "up " + (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (secs % 60) + "s";
}

function fill(tableId, rows, cols, empty) {
  const body = $(tableId).tBodies[0];
  const out = [];
  for (const row of rows) {
    const tr = el("tr");
    for (const c of cols) {
      const v = c(row);
      const td = el("td");
      if (v instanceof Node) td.appendChild(v); else td.textContent = v === undefined || v === null ? "" : String(v);
      tr.appendChild(td);
    }
    out.push(tr);
  }
  if (out.length === 0) {
    const tr = el("tr");
    const td = el("td", empty, "empty");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    tr.appendChild(td);
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function bar(frac) {
  const b = el("div", null, "bar" + (frac <= 0.05 ? " empty" : frac < 0.25 ? " low" : ""));
  const f = el("div");
  f.style.width = Math.max(0, Math.min(1, frac)) * 100 + "%";
  b.appendChild(f);
  return b;
}

function drawChart() {
  const svg = $("chart");
  const W = 600, H = 160, pad = 14;
  const points = history.filter(p => p.t > 0);
  const peak = Math.max(1, ...points.map(p => p.requests));
  const ns = "http://www.w3.org/2000/svg";
  const nodes = [], labels = [];
  $("peak").textContent = "peak " + num(peak) + "/s over " + points.length + " s";
  // x is time: the newest point at the right edge, keep seconds across.
  const end = points.length ? points[points.length - 1].t : Date.now();
  const x = t => W - (end - t) / (keep * 1000) * W;
  for (let m = Math.floor(end / 60000) * 60000; x(m) >= 0; m -= 60000) {
    const gl = document.createElementNS(ns, "line");
    gl.setAttribute("x1", x(m).toFixed(1)); gl.setAttribute("x2", x(m).toFixed(1));
    gl.setAttribute("y1", "0"); gl.setAttribute("y2", String(H));
    nodes.push(gl);
    const label = el("span", clock(new Date(m), false));
    label.style.left = (x(m) / W * 100).toFixed(2) + "%";
    labels.push(label);
  }
  for (const s of series) {
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("points", points.map(p => x(p.t).toFixed(1) + "," + (H - (p[s.key] / peak) * (H - pad) - 1).toFixed(1)).join(" "));
    pl.style.stroke = s.color;
    nodes.push(pl);
  }
  svg.replaceChildren(...nodes);
  $("chart-axis").replaceChildren(...labels);
}

function render(st) {
  $("instance").textContent = st.instance || "";
  $("version").textContent = st.version || "";
  $("uptime").textContent = duration(st.uptime_seconds || 0);
  const now = st.now || {}, tot = st.totals || {};
  $("t-requests").textContent = num(now.requests || 0);
  $("t-hitratio").textContent = pct(now.hit_ratio || 0) + " · " + pct(tot.hit_ratio || 0);
  $("t-saved").textContent = num(tot.upstream_calls_saved || 0);
  $("t-refused").textContent = num(now.refused || 0);
  $("t-overbudget").textContent = num(now.over_budget || 0);
  $("t-cache").textContent = bytes(st.cache.bytes) + " · " + num(st.cache.entries) + " entries";
  $("t-blobs").textContent = st.blobs ? bytes(st.blobs.bytes) + " · " + st.blobs.files + " files" : "off";

  fill("budgets", st.budgets || [], [
    b => b.budget, b => b.key || "",
    b => bar(b.capacity > 0 ? b.available / b.capacity : 0),
    b => num(b.available) + " of " + num(b.capacity), b => b.queued,
    b => b.paused_until ? time(b.paused_until) : "",
  ], "no budget spent yet");

  fill("refusals", st.refusals || [], [
    x => time(x.time), x => x.client + (x.client_name ? " (" + x.client_name + ")" : ""), x => x.host, x => x.method + " " + x.path, x => x.stage,
    x => x.reason + (x.rule_set ? " (" + x.rule_set + ": " + x.check + ")" : ""),
  ], "nothing refused");

  fill("bans", st.bans || [], [
    b => b.client, b => datetime(b.until), b => b.reason,
    b => { const btn = el("button", "unban"); btn.dataset.client = b.client; btn.addEventListener("click", () => unban(b.client)); return btn; },
  ], "nobody banned");
  $("bans-more").textContent = st.bans_total > (st.bans || []).length ? "and " + (st.bans_total - st.bans.length) + " more (sluice bans ls)" : "";

  $("blobs-section").hidden = !st.blobs;
  if (st.blobs) {
    fill("downloads", st.blobs.downloads || [], [
      d => d.key,
      d => d.length > 0 ? bar(d.bytes / d.length) : "",
      d => bytes(d.bytes) + (d.length >= 0 ? " of " + bytes(d.length) : ""),
      d => bytes(d.rate) + "/s", d => d.readers,
    ], "none");
  }
  const halts = st.halts || [], limits = st.trade_limits || [];
  $("trading-section").hidden = halts.length === 0 && limits.length === 0;
  fill("halts", halts, [h => h.scope, h => h.mode, h => h.until ? datetime(h.until) : "sluice resume", h => h.reason], "nothing halted");
  fill("trade-limits", limits, [u => u.scope, u => u.limit, u => bar(u.max > 0 ? 1 - u.used / u.max : 0), u => num(u.used) + " of " + num(u.max)], "no limits");
  const hubs = st.streams || [];
  $("streams-section").hidden = hubs.length === 0;
  fill("stream-hubs", hubs, [h => h.host, h => h.upstream_connections, h => h.clients, h => (h.streams || []).length], "none");
  fill("streams", hubs.flatMap(h => (h.streams || []).map(s => ({...s, host: h.host}))).slice(0, 50), [
    s => s.name, s => s.host, s => s.clients, s => s.upstream_connection,
  ], "none");
  $("pins-section").hidden = !st.pins;
  if (st.pins) {
    fill("pins", st.pins, [
      p => p.host, p => (p.addrs || []).join(", "), p => time(p.since), p => (p.disagreeing || []).join(", "),
    ], "no pins yet");
  }
  drawChart();
}

async function unban(client) {
  const msg = $("action-msg");
  const token = $("token").value.trim();
  sessionStorage.setItem("sluice-token", token);
  try {
    const resp = await fetch("/bans/" + encodeURIComponent(client), { method: "DELETE", headers: { Authorization: "Bearer " + token } });
    const body = await resp.json().catch(() => ({}));
    msg.className = resp.ok ? "ok" : "err";
    msg.textContent = resp.ok ? "ban on " + client + " lifted" : "unban refused (" + resp.status + "): " + (body.error || resp.statusText);
  } catch (e) {
    msg.className = "err";
    msg.textContent = "unban failed: " + e.message;
  }
}

function legend() {
  const out = series.map(s => {
    const span = el("span");
    const i = el("i");
    i.style.background = s.color;
    span.append(i, s.label);
    return span;
  });
  out.push(el("span", "", "muted"));
  out[out.length - 1].id = "peak";
  $("legend").replaceChildren(...out);
}

function connect() {
  const src = new EventSource("/events");
  src.addEventListener("status", ev => {
    const st = JSON.parse(ev.data);
    if (st.history) history = st.history;
    else if (st.now && st.now.t && (!history.length || history[history.length - 1].t !== st.now.t)) history.push(st.now);
    if (history.length > keep) history = history.slice(history.length - keep);
    $("live").classList.add("on");
    render(st);
  });
  src.onerror = () => $("live").classList.remove("on");
}

$("token").value = sessionStorage.getItem("sluice-token") || "";
legend();
connect();
