// pifleet dashboard. No framework, no build step: the fleet table is built once from the
// `fleet` snapshot of /api/events and then updated cell by cell from each WatchEvent.
"use strict";

const STALE_MS = 120000; // a sensor reading older than this on an online device is stale
const LIVE_WINDOW_MS = 5 * 60000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};

let csrf = null;
let skew = 0; // server clock minus ours
const now = () => Date.now() + skew;
const devices = new Map(); // name -> DeviceStatus (the API's JSON)
const rows = new Map(); // name -> <tr>
const live = new Map(); // sensor -> Map(device -> [[ts, value]])
let historyRange = "1h";

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

function ago(ts) {
  if (!ts) return "-";
  const s = Math.max(0, Math.round((now() - ts) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  if (opts.method && opts.method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    credentials: "same-origin",
  });
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    const err = new Error((data && data.error) || r.status + " " + r.statusText);
    err.status = r.status;
    throw err;
  }
  return data;
}

// ---- the fleet table ---------------------------------------------------------------------

function command(target, name, action, output) {
  const body = { target, action };
  if (name) body.name = name;
  if (output) body.output = output;
  const label = target === "all" ? "all devices" : target + " " + name;
  $("busy").textContent = action + " → " + label + "…";
  return api("/api/command", { method: "POST", body })
    .then((report) => { showReport(report, action + " → " + label); showError(""); })
    .catch((e) => showError("command failed: " + e.message))
    .finally(() => { $("busy").textContent = ""; });
}

function showReport(report, caption) {
  const t = $("results");
  const body = t.tBodies[0];
  body.replaceChildren();
  for (const r of report.results) {
    const outcome = r.outcome.replace("_", " ");
    body.append(el("tr", { "data-device": r.device, "data-outcome": r.outcome },
      el("td", { text: r.device }),
      el("td", { class: "outcome-" + r.outcome, text: outcome }),
      el("td", { text: r.on === undefined ? "-" : (r.on ? "on" : "off") }),
      el("td", { text: r.latency_ms === undefined ? "-" : r.latency_ms + " ms" }),
      el("td", { text: r.message || "" })));
  }
  const ok = report.results.filter((r) => r.outcome === "confirmed").length;
  $("results-caption").textContent = report.results.length
    ? `${caption}: ${ok} of ${report.results.length} confirmed`
    : `${caption}: no device matched`;
  t.hidden = false;
}

function makeRow(name) {
  const tr = el("tr", { "data-device": name },
    el("td", { class: "name" }, el("b", { text: name })),
    el("td", { class: "presence" }),
    el("td", { class: "groups" }),
    el("td", { class: "outputs" }),
    el("td", { class: "inputs" }),
    el("td", { class: "sensors" }),
    el("td", { class: "seen" }));
  rows.set(name, tr);
  // Keep rows sorted by name.
  const body = $("fleet").tBodies[0];
  const after = [...rows.keys()].sort().find((n) => n > name);
  body.insertBefore(tr, after ? rows.get(after) : null);
  return tr;
}

function cell(tr, cls) { return tr.querySelector("td." + cls); }

function renderPresence(name) {
  const d = devices.get(name), tr = rows.get(name) || makeRow(name);
  const p = cell(tr, "presence");
  p.textContent = d.online ? "online" : "offline";
  p.className = "presence " + (d.online ? "online" : "offline");
  tr.dataset.presence = d.online ? "online" : "offline";
  cell(tr, "groups").textContent = (d.groups || []).join(", ") || "-";
  tr.dataset.groups = (d.groups || []).join(" ");
  refreshTargets();
  renderAge(name);
}

function renderOutput(name, output) {
  const d = devices.get(name), tr = rows.get(name) || makeRow(name);
  const td = cell(tr, "outputs");
  let span = td.querySelector(`[data-output="${output}"]`);
  if (!span) {
    span = el("span", { class: "out", "data-output": output },
      el("span", { class: "oname", text: output }),
      el("span", { class: "state" }),
      ...["on", "off", "toggle"].map((a) => el("button", {
        class: "small", "data-action": a, text: a,
        onclick: () => command("device", name, a, output),
      })));
    td.append(span);
  }
  const on = d.outputs[output].on;
  span.dataset.on = on;
  const st = span.querySelector(".state");
  st.textContent = on ? "on" : "off";
  st.className = "state" + (on ? " on" : "");
}

function renderInput(name, input) {
  const d = devices.get(name), tr = rows.get(name) || makeRow(name);
  const td = cell(tr, "inputs");
  let span = td.querySelector(`[data-input="${input}"]`);
  if (!span) {
    span = el("span", { class: "out", "data-input": input },
      el("span", { text: input }), el("span", { class: "state" }));
    td.append(span);
  }
  const active = d.inputs[input].active;
  span.dataset.active = active;
  const st = span.querySelector(".state");
  st.textContent = active ? "pressed" : "released";
  st.className = "state" + (active ? " active" : "");
}

function renderSensor(name, sensor) {
  const d = devices.get(name), tr = rows.get(name) || makeRow(name);
  const td = cell(tr, "sensors");
  let span = td.querySelector(`[data-sensor="${sensor}"]`);
  if (!span) {
    span = el("span", { class: "sensor", "data-sensor": sensor },
      el("span", { class: "v" }), " ", el("span", { class: "age" }));
    td.append(span);
  }
  const r = d.sensors[sensor];
  span.querySelector(".v").textContent = `${sensor}=${Number(r.value).toFixed(2)}${r.unit}`;
  refreshSensors();
}

// Ages and staleness change with time alone: updated every second, text only.
function renderAge(name) {
  const d = devices.get(name), tr = rows.get(name);
  if (!d || !tr) return;
  let stale = false;
  for (const span of cell(tr, "sensors").querySelectorAll("[data-sensor]")) {
    const r = d.sensors[span.dataset.sensor];
    const old = d.online && now() - r.ts > STALE_MS;
    stale = stale || old;
    span.classList.toggle("stale", old);
    span.querySelector(".age").textContent = "(" + ago(r.ts) + ")";
  }
  cell(tr, "seen").textContent = ago(d.last_seen);
  tr.classList.toggle("offline", !d.online);
  tr.classList.toggle("stale", stale);
}

function applyFilter() {
  const q = $("filter").value.trim().toLowerCase();
  let shown = 0;
  for (const [name, tr] of rows) {
    const hit = !q || name.toLowerCase().includes(q) || (tr.dataset.groups || "").toLowerCase().includes(q);
    tr.hidden = !hit;
    if (hit) shown++;
  }
  const online = [...devices.values()].filter((d) => d.online).length;
  $("count").textContent = `${online} online of ${devices.size}` + (q ? `, ${shown} shown` : "");
  $("empty").hidden = devices.size > 0;
}

function refreshTargets() {
  const sel = $("target");
  const keep = sel.value;
  const groups = new Set();
  for (const d of devices.values()) for (const g of d.groups || []) groups.add(g);
  const opts = [el("option", { value: "all:", text: "All devices" })];
  for (const g of [...groups].sort()) opts.push(el("option", { value: "group:" + g, text: "group " + g }));
  for (const n of [...devices.keys()].sort()) opts.push(el("option", { value: "device:" + n, text: n }));
  sel.replaceChildren(...opts);
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  const csvSel = $("csv-device"), csvKeep = csvSel.value;
  csvSel.replaceChildren(...[...devices.keys()].sort().map((n) => el("option", { value: n, text: n })));
  if (csvKeep) csvSel.value = csvKeep;
  updateCsv();
  applyFilter();
}

function snapshot(fleet) {
  devices.clear();
  rows.clear();
  $("fleet").tBodies[0].replaceChildren();
  for (const d of fleet.devices) {
    devices.set(d.device, d);
    renderPresence(d.device);
    for (const o of Object.keys(d.outputs || {})) renderOutput(d.device, o);
    for (const i of Object.keys(d.inputs || {})) renderInput(d.device, i);
    for (const s of Object.keys(d.sensors || {})) {
      renderSensor(d.device, s);
      pushLive(s, d.device, d.sensors[s]);
    }
    renderAge(d.device);
  }
  refreshTargets();
  refreshSensors();
}

function device(name) {
  let d = devices.get(name);
  if (!d) {
    d = { device: name, online: false, groups: [], outputs: {}, inputs: {}, sensors: {} };
    devices.set(name, d);
    renderPresence(name);
  }
  return d;
}

function onEvent(ev) {
  const d = device(ev.device);
  const ts = ev.presence ? ev.presence.ts : (ev.state || ev.reading || ev.event || {}).ts;
  if (ts) d.last_seen = Math.max(d.last_seen || 0, ts);
  switch (ev.type) {
    case "presence": {
      const p = ev.presence;
      d.online = p.state === "online";
      if (d.online || (p.groups && p.groups.length) || p.version) {
        d.groups = p.groups || [];
        d.version = p.version;
      }
      renderPresence(ev.device);
      break;
    }
    case "output": d.outputs[ev.output] = ev.state; renderOutput(ev.device, ev.output); break;
    case "input": d.inputs[ev.input] = ev.state; renderInput(ev.device, ev.input); break;
    case "sensor":
      d.sensors[ev.sensor] = ev.reading;
      renderSensor(ev.device, ev.sensor);
      pushLive(ev.sensor, ev.device, ev.reading);
      drawLive(ev.sensor);
      break;
    case "event": break;
  }
  renderAge(ev.device);
  applyFilter();
}

// ---- charts --------------------------------------------------------------------------------

function colorOf(name) {
  const names = [...devices.keys()].sort();
  return COLORS[Math.max(0, names.indexOf(name)) % COLORS.length];
}

// Draws `series` ([{label, points: [[t, v]...]}]) on `canvas` for times [t0, t1]; records the
// number of points drawn in data-points.
function drawChart(canvas, series, t0, t1, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 48, r: 8, t: 8, b: 20 };
  let lo = Infinity, hi = -Infinity, n = 0;
  for (const s of series) for (const [t, v] of s.points) if (t >= t0 && t <= t1) { lo = Math.min(lo, v); hi = Math.max(hi, v); n++; }
  canvas.dataset.points = n;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#777";
  if (!n) { g.fillText("no data in this range", pad.l + 8, h / 2); return; }
  if (lo === hi) { lo -= 1; hi += 1; }
  const x = (t) => pad.l + (t - t0) / (t1 - t0) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v - lo) / (hi - lo) * (h - pad.t - pad.b);
  g.strokeStyle = "#ddd";
  g.beginPath();
  for (const v of [lo, (lo + hi) / 2, hi]) { g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.fillText(v.toFixed(1) + (unit || ""), 2, y(v) + 4); }
  g.stroke();
  const span = t1 - t0;
  const fmt = (t) => { const d = new Date(t); return span > 2 * 86400000 ? d.toLocaleDateString() : d.toLocaleTimeString(); };
  g.fillText(fmt(t0), pad.l, h - 4);
  const end = fmt(t1);
  g.fillText(end, w - pad.r - g.measureText(end).width, h - 4);
  let lx = pad.l + 8;
  for (const s of series) {
    g.strokeStyle = g.fillStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let first = true;
    for (const [t, v] of s.points) {
      if (t < t0 || t > t1) continue;
      if (first) g.moveTo(x(t), y(v)); else g.lineTo(x(t), y(v));
      first = false;
    }
    g.stroke();
    for (const [t, v] of s.points) if (t >= t0 && t <= t1) g.fillRect(x(t) - 1.5, y(v) - 1.5, 3, 3);
    g.fillText(s.label, lx, pad.t + 10);
    lx += g.measureText(s.label).width + 12;
  }
}

function pushLive(sensor, dev, reading) {
  if (!live.has(sensor)) live.set(sensor, new Map());
  const m = live.get(sensor);
  if (!m.has(dev)) m.set(dev, []);
  const pts = m.get(dev);
  if (pts.length && pts[pts.length - 1][0] >= reading.ts) return;
  pts.push([reading.ts, reading.value]);
  while (pts.length && pts[0][0] < now() - LIVE_WINDOW_MS) pts.shift();
}

function liveCanvas(sensor) {
  let c = document.querySelector(`canvas[data-live="${sensor}"]`);
  if (!c) {
    c = el("canvas", { class: "chart", "data-live": sensor, width: "420", height: "200" });
    $("live").append(el("div", { class: "chartbox" }, el("h3", { text: sensor }), c));
  }
  return c;
}

function drawLive(sensor) {
  const m = live.get(sensor);
  if (!m) return;
  let unit = "";
  for (const d of devices.values()) if (d.sensors && d.sensors[sensor]) unit = d.sensors[sensor].unit;
  const series = [...m.entries()].sort().map(([dev, points]) => ({ label: dev, color: colorOf(dev), points }));
  const t1 = now();
  drawChart(liveCanvas(sensor), series, t1 - LIVE_WINDOW_MS, t1, unit);
}

function refreshSensors() {
  const names = new Set();
  for (const d of devices.values()) for (const s of Object.keys(d.sensors || {})) names.add(s);
  const sel = $("h-sensor"), keep = sel.value;
  const sorted = [...names].sort();
  if (sorted.join() !== [...sel.options].map((o) => o.value).join()) {
    sel.replaceChildren(...sorted.map((s) => el("option", { value: s, text: s })));
    if (keep && names.has(keep)) sel.value = keep;
  }
  refreshHistoryDevices();
}

const unchecked = new Set(); // devices the user took off the history chart
let historyTimer = null;
function loadHistorySoon() {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(loadHistory, 200);
}

// One checkbox per device that has the chosen sensor; new devices start checked.
function refreshHistoryDevices() {
  const sensor = $("h-sensor").value;
  const box = $("h-devices");
  const names = [...devices.values()].filter((d) => d.sensors && d.sensors[sensor]).map((d) => d.device).sort();
  if (names.join() === [...box.querySelectorAll("input")].map((i) => i.value).join()) return;
  box.replaceChildren(...names.map((n) => el("label", {},
    el("input", Object.assign({
      type: "checkbox", value: n,
      onchange: (ev) => { if (ev.target.checked) unchecked.delete(n); else unchecked.add(n); loadHistorySoon(); },
    }, unchecked.has(n) ? {} : { checked: "" })),
    " " + n)));
  loadHistorySoon();
}

let historySeq = 0;
async function loadHistory() {
  const sensor = $("h-sensor").value;
  const canvas = $("h-chart");
  if (!sensor) return;
  const chosen = [...$("h-devices").querySelectorAll("input:checked")].map((i) => i.value);
  const seq = ++historySeq;
  const buckets = Math.max(50, Math.min(2000, Math.round(canvas.clientWidth || 900)));
  const t1 = now();
  const t0 = t1 - { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 }[historyRange];
  const series = [];
  const notes = [];
  let unit = "";
  for (const dev of chosen) {
    try {
      const s = await api(`/api/history/${encodeURIComponent(dev)}/${encodeURIComponent(sensor)}?since=${historyRange}&buckets=${buckets}`);
      unit = s.unit || unit;
      series.push({ label: dev, color: colorOf(dev), points: s.buckets.map((b) => [(b.first_ms + b.last_ms) / 2, b.mean]) });
      notes.push(`${dev}: ${s.points} points`);
    } catch (e) {
      notes.push(`${dev}: ${e.status === 404 ? "no history" : e.message}`);
    }
  }
  if (seq !== historySeq) return;
  $("h-note").textContent = notes.join(", ");
  drawChart(canvas, series, t0, t1, unit);
}

function updateCsv() {
  const dev = $("csv-device").value, day = $("csv-day").value;
  const a = $("csv");
  if (dev && day) {
    a.href = `/api/history/${encodeURIComponent(dev)}/${day}.csv`;
    a.setAttribute("download", `${dev}-${day}.csv`);
  }
}

// ---- start ---------------------------------------------------------------------------------

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("hello", (m) => { skew = JSON.parse(m.data).now_ms - Date.now(); });
  es.addEventListener("fleet", (m) => { snapshot(JSON.parse(m.data)); showError(""); });
  es.addEventListener("link", (m) => {
    const up = JSON.parse(m.data).connected;
    const l = $("link");
    l.textContent = up ? "broker connected" : "broker connection lost";
    l.className = "link " + (up ? "up" : "down");
    showError(up ? "" : "The dashboard lost its connection to the broker; what is shown may be out of date.");
  });
  es.onmessage = (m) => onEvent(JSON.parse(m.data));
  es.onerror = () => {
    const l = $("link");
    l.textContent = "dashboard unreachable";
    l.className = "link down";
    showError("Lost the live connection to the dashboard; retrying…");
  };
  es.onopen = () => showError("");
}

async function start() {
  let s;
  try {
    s = await api("/api/session");
  } catch (e) {
    if (e.status === 401) { $("login").hidden = false; $("main").hidden = true; return; }
    showError("cannot reach the dashboard: " + e.message);
    return;
  }
  csrf = s.csrf;
  $("login").hidden = true;
  $("main").hidden = false;
  $("who").textContent = s.user ? "logged in as " + s.user : "";
  $("logout").hidden = !s.user;
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button.act")) {
    b.addEventListener("click", () => {
      const [kind, name] = $("target").value.split(":");
      command(kind, name || null, b.dataset.action, $("output").value.trim() || null);
    });
  }
  for (const b of document.querySelectorAll("button.range")) {
    b.addEventListener("click", () => {
      historyRange = b.dataset.range;
      for (const o of document.querySelectorAll("button.range")) o.classList.toggle("sel", o === b);
      loadHistory();
    });
  }
  $("filter").addEventListener("input", applyFilter);
  $("h-sensor").addEventListener("change", () => { refreshHistoryDevices(); loadHistory(); });
  $("csv-device").addEventListener("change", updateCsv);
  $("csv-day").addEventListener("change", updateCsv);
  $("csv-day").value = new Date().toISOString().slice(0, 10);
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("/api/login", { method: "POST", body: { user: $("login-user").value, password: $("login-password").value } });
      $("login-error").textContent = "";
      start();
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    await api("/api/logout", { method: "POST" }).catch(() => {});
    location.reload();
  });
  setInterval(() => {
    for (const n of devices.keys()) renderAge(n);
    for (const s of live.keys()) drawLive(s);
  }, 1000);
  setInterval(loadHistory, 60000);
  start();
});
