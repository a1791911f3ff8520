// pifleet dashboard. No framework, no build step. Built for fleets of thousands: each
// WatchEvent of /api/events only updates the model (`devices`) and marks its device dirty; at
// most every FLUSH_MS, in one animation frame, the dirty rows, and only they, are updated cell by
// cell (text set only when it changed), so the table is laid out a few times a second however
// many messages arrive. Rows are created once, in name order; the filter hides rows, it never
// rebuilds them. Ages and charts are redrawn once a second in the same frame; each chart shows
// at most MAX_SERIES devices: those the filter shows, first by name.
"use strict";

const STALE_MS = 120000; // a sensor reading older than this on an online device is stale
const LIVE_WINDOW_MS = 5 * 60000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const MAX_SERIES = COLORS.length; // devices on one chart
const FLUSH_MS = 250; // the table is updated at most this often

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
const order = []; // device names, sorted: the table's row order
const live = new Map(); // sensor -> Map(device -> [t0, v0, t1, v1, ...]) (flat: unboxed numbers)
let historyRange = "1h";

// What the next frame has to do.
const dirty = new Set(); // devices whose row is out of date
let listsDirty = false; // the set of devices, groups or sensors changed: selects, chart devices
let countDirty = false; // presence or visibility changed: the "N online of M" line
let secondDue = false; // a second passed: ages and charts
let frame = 0, lastFlush = 0;
// What the page did, for a look from the console or a benchmark: events handled, table updates
// and the time they took (script only, not the browser's layout).
const stats = { events: 0, flushes: 0, flushMs: 0 };
function schedule() {
  if (frame) return;
  const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
  frame = setTimeout(() => requestAnimationFrame(flush), wait);
}

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

function command(target, name, action, output, value) {
  const body = { target, action };
  if (name) body.name = name;
  if (output) body.output = output;
  if (value !== undefined) body.value = value;
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
  const frag = document.createDocumentFragment();
  // What needs attention first, then by name (the report's order).
  const rank = (r) => (r.outcome === "confirmed" ? 1 : 0);
  for (const r of [...report.results].sort((a, b) => rank(a) - rank(b))) {
    const outcome = r.outcome.replace("_", " ");
    frag.append(el("tr", { "data-device": r.device, "data-outcome": r.outcome },
      el("td", { text: r.device }),
      el("td", { class: "outcome-" + r.outcome, text: outcome }),
      el("td", { text: r.on === undefined ? "-" : (r.on ? "on" : "off") }),
      el("td", { text: r.latency_ms === undefined ? "-" : r.latency_ms + " ms" }),
      el("td", { text: r.message || "" })));
  }
  body.replaceChildren(frag);
  const ok = report.results.filter((r) => r.outcome === "confirmed").length;
  $("results-caption").textContent = report.results.length
    ? `${caption}: ${ok} of ${report.results.length} confirmed`
    : `${caption}: no device matched`;
  t.hidden = false;
}

// Sets a node's text only when it changes (no layout work for an unchanged cell).
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// Where `name` goes in the sorted `order`.
function position(name) {
  let lo = 0, hi = order.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (order[mid] < name) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function filterText() { return $("filter").value.trim().toLowerCase(); }

function matches(name, q) {
  if (!q) return true;
  const d = devices.get(name);
  return name.toLowerCase().includes(q) || ((d && d.groups) || []).some((g) => g.toLowerCase().includes(q));
}

// A row, not yet in the table; its cells by class in `tr.cellsByClass`.
function newRow(name, q) {
  const tr = el("tr", { "data-device": name },
    el("td", { class: "name" }, el("b", { text: name })),
    el("td", { class: "presence" }),
    el("td", { class: "groups" }),
    el("td", { class: "outputs" }),
    el("td", { class: "inputs" }),
    el("td", { class: "sensors" }),
    el("td", { class: "seen" }));
  tr.cellsByClass = {};
  for (const td of tr.children) tr.cellsByClass[td.className] = td;
  tr.hidden = !matches(name, q);
  return tr;
}

// Adds a row in name order.
function makeRow(name) {
  const tr = newRow(name, filterText());
  rows.set(name, tr);
  const i = position(name);
  order.splice(i, 0, name);
  const next = order[i + 1];
  $("fleet").tBodies[0].insertBefore(tr, next === undefined ? null : rows.get(next));
  listsDirty = true;
  return tr;
}

function removeRow(name) {
  const tr = rows.get(name);
  if (tr) tr.remove();
  rows.delete(name);
  const i = position(name);
  if (order[i] === name) order.splice(i, 1);
  live.forEach((m) => m.delete(name));
  listsDirty = true;
}

function cell(tr, cls) { return tr.cellsByClass[cls]; }

// Brings one device's row up to date with the model.
function renderRow(name) {
  const d = devices.get(name);
  if (!d) return;
  const tr = rows.get(name) || makeRow(name);
  const presence = d.online ? "online" : "offline";
  if (tr.dataset.presence !== presence) {
    tr.dataset.presence = presence;
    const p = cell(tr, "presence");
    p.textContent = presence;
    p.className = "presence " + presence;
    countDirty = true;
  }
  const groups = (d.groups || []).join(" ");
  if (tr.dataset.groups !== groups) {
    tr.dataset.groups = groups;
    setText(cell(tr, "groups"), (d.groups || []).join(", ") || "-");
    tr.hidden = !matches(name, filterText());
    listsDirty = true;
    countDirty = true;
  }
  for (const o of Object.keys(d.outputs || {})) renderOutput(tr, name, o, d.outputs[o]);
  for (const i of Object.keys(d.inputs || {})) renderInput(tr, i, d.inputs[i]);
  for (const s of Object.keys(d.sensors || {})) renderSensor(tr, s, d.sensors[s]);
  renderAge(name);
}

function renderOutput(tr, name, output, state) {
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
  // A dimmable output (its state carries a level) gets a level control, once.
  if (typeof state.level === "number" && !span.querySelector("input.level")) {
    const level = el("input", {
      class: "level", type: "number", min: "0", max: "100", step: "1",
      "data-level-for": output, title: "level, %",
    });
    level.value = String(state.level);
    span.append(level, el("button", {
      class: "small", "data-action": "set", text: "set",
      onclick: () => command("device", name, "set", output, Number(level.value)),
    }));
  }
  const shown = typeof state.level === "number" ? state.level + " %" : (state.on ? "on" : "off");
  const key = shown + (state.off_at ? " pulse" : "");
  if (span.dataset.shown === key) return;
  span.dataset.shown = key;
  span.dataset.on = String(!!state.on);
  const st = span.querySelector(".state");
  st.textContent = shown + (state.off_at ? " (pulse)" : "");
  st.className = "state" + (state.on ? " on" : "");
}

function renderInput(tr, input, state) {
  const td = cell(tr, "inputs");
  let span = td.querySelector(`[data-input="${input}"]`);
  if (!span) {
    span = el("span", { class: "out", "data-input": input },
      el("span", { text: input }), el("span", { class: "state" }));
    td.append(span);
  }
  const active = String(!!state.active);
  if (span.dataset.active === active) return;
  span.dataset.active = active;
  const st = span.querySelector(".state");
  st.textContent = state.active ? "pressed" : "released";
  st.className = "state" + (state.active ? " active" : "");
}

function renderSensor(tr, sensor, r) {
  const td = cell(tr, "sensors");
  let span = td.querySelector(`[data-sensor="${sensor}"]`);
  if (!span) {
    span = el("span", { class: "sensor", "data-sensor": sensor },
      el("span", { class: "v" }), " ", el("span", { class: "age" }));
    td.append(span);
    listsDirty = true;
  }
  setText(span.firstChild, `${sensor}=${Number(r.value).toFixed(2)}${r.unit}`);
}

// Ages and staleness change with time alone: updated every second, text only.
function renderAge(name) {
  const d = devices.get(name), tr = rows.get(name);
  if (!d || !tr) return;
  let stale = false;
  for (const span of cell(tr, "sensors").children) {
    const r = d.sensors[span.dataset.sensor];
    if (!r) continue;
    const old = d.online && now() - r.ts > STALE_MS;
    stale = stale || old;
    if (span.classList.contains("stale") !== old) span.classList.toggle("stale", old);
    setText(span.lastChild, "(" + ago(r.ts) + ")");
  }
  setText(cell(tr, "seen"), ago(d.last_seen));
  if (tr.classList.contains("offline") === d.online) tr.classList.toggle("offline", !d.online);
  if (tr.classList.contains("stale") !== stale) tr.classList.toggle("stale", stale);
}

function updateCount() {
  const q = filterText();
  let online = 0, shown = 0;
  for (const d of devices.values()) if (d.online) online++;
  if (q) for (const tr of rows.values()) if (!tr.hidden) shown++;
  $("count").textContent = `${online} online of ${devices.size}` + (q ? `, ${shown} shown` : "");
  $("empty").hidden = devices.size > 0;
}

// The filter box: name or group contains the text. Hides and shows rows; builds nothing.
function applyFilter() {
  const q = filterText();
  for (const [name, tr] of rows) {
    const hide = !matches(name, q);
    if (tr.hidden !== hide) {
      tr.hidden = hide;
      if (!hide) renderAge(name);
    }
  }
  updateCount();
  refreshHistoryDevices();
  for (const s of live.keys()) drawLive(s);
}

function flush() {
  frame = 0;
  const started = performance.now();
  lastFlush = started;
  for (const name of dirty) renderRow(name);
  dirty.clear();
  if (listsDirty) {
    listsDirty = false;
    refreshTargets();
    refreshSensors();
  }
  if (countDirty) {
    countDirty = false;
    updateCount();
  }
  if (secondDue) {
    secondDue = false;
    for (const [n, tr] of rows) if (!tr.hidden) renderAge(n);
    for (const s of live.keys()) drawLive(s);
  }
  stats.flushes++;
  stats.flushMs += performance.now() - started;
}

function refreshTargets() {
  const sel = $("target");
  const keep = sel.value;
  const groups = new Set();
  for (const d of devices.values()) for (const g of d.groups || []) groups.add(g);
  const opts = [el("option", { value: "all:", text: "All devices" })];
  for (const g of [...groups].sort()) opts.push(el("option", { value: "group:" + g, text: "group " + g }));
  for (const n of order) opts.push(el("option", { value: "device:" + n, text: n }));
  sel.replaceChildren(...opts);
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  const csvSel = $("csv-device"), csvKeep = csvSel.value;
  csvSel.replaceChildren(...order.map((n) => el("option", { value: n, text: n })));
  if (csvKeep) csvSel.value = csvKeep;
  updateCsv();
  countDirty = true;
}

// A `fleet` snapshot: the first one, or a fresh one after a reconnect or after this page fell
// behind. Existing rows are updated in place, devices no longer listed removed.
function snapshot(fleet) {
  const listed = new Set();
  const fresh = rows.size === 0;
  for (const d of fleet.devices) {
    listed.add(d.device);
    devices.set(d.device, d);
    dirty.add(d.device);
    for (const s of Object.keys(d.sensors || {})) pushLive(s, d.device, d.sensors[s]);
  }
  for (const name of [...devices.keys()]) {
    if (!listed.has(name)) { devices.delete(name); dirty.delete(name); removeRow(name); }
  }
  if (fresh) {
    // Build all rows at once, off the document, in order.
    order.length = 0;
    order.push(...[...listed].sort());
    const frag = document.createDocumentFragment();
    const q = filterText();
    for (const name of order) {
      const tr = newRow(name, q);
      rows.set(name, tr);
      frag.append(tr);
    }
    $("fleet").tBodies[0].replaceChildren(frag);
  }
  listsDirty = true;
  countDirty = true;
  if (frame) clearTimeout(frame);
  flush();
  for (const s of live.keys()) drawLive(s);
}

function device(name) {
  let d = devices.get(name);
  if (!d) {
    d = { device: name, online: false, groups: [], outputs: {}, inputs: {}, sensors: {} };
    devices.set(name, d);
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
      break;
    }
    case "output": d.outputs[ev.output] = ev.state; break;
    case "input": d.inputs[ev.input] = ev.state; break;
    case "sensor":
      d.sensors[ev.sensor] = ev.reading;
      pushLive(ev.sensor, ev.device, ev.reading);
      break;
    case "event": break;
  }
  stats.events++;
  dirty.add(ev.device);
  schedule();
}

// ---- charts --------------------------------------------------------------------------------

// Up to MAX_SERIES devices with `sensor`, among those the filter shows, first by name; and how
// many had it in all.
function chartDevices(sensor) {
  const q = filterText();
  const out = [];
  let total = 0;
  for (const name of order) {
    const d = devices.get(name);
    if (!d.sensors || !d.sensors[sensor] || !matches(name, q)) continue;
    total++;
    if (out.length < MAX_SERIES) out.push(name);
  }
  return { names: out, total };
}

// Draws `series` ([{label, color, points: [t0, v0, t1, v1, ...]}]) on `canvas` for times
// [t0, t1]; records the number of points drawn in data-points.
function drawChart(canvas, series, t0, t1, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  // Setting the size clears the canvas and costs a layout: only when it changed.
  const cw = Math.round(w * dpr), ch = Math.round(h * dpr);
  if (canvas.width !== cw) canvas.width = cw;
  if (canvas.height !== ch) canvas.height = ch;
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 48, r: 8, t: 8, b: 20 };
  let lo = Infinity, hi = -Infinity, n = 0;
  for (const s of series) {
    const p = s.points;
    for (let i = 0; i < p.length; i += 2) {
      if (p[i] >= t0 && p[i] <= t1) { lo = Math.min(lo, p[i + 1]); hi = Math.max(hi, p[i + 1]); n++; }
    }
  }
  canvas.dataset.points = n;
  canvas.dataset.series = series.length;
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
    const p = s.points;
    g.strokeStyle = g.fillStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let first = true;
    for (let i = 0; i < p.length; i += 2) {
      if (p[i] < t0 || p[i] > t1) continue;
      if (first) g.moveTo(x(p[i]), y(p[i + 1])); else g.lineTo(x(p[i]), y(p[i + 1]));
      first = false;
    }
    g.stroke();
    for (let i = 0; i < p.length; i += 2) if (p[i] >= t0 && p[i] <= t1) g.fillRect(x(p[i]) - 1.5, y(p[i + 1]) - 1.5, 3, 3);
    g.fillText(s.label, lx, pad.t + 10);
    lx += g.measureText(s.label).width + 12;
  }
}

function pushLive(sensor, dev, reading) {
  if (!live.has(sensor)) live.set(sensor, new Map());
  const m = live.get(sensor);
  if (!m.has(dev)) m.set(dev, []);
  const pts = m.get(dev);
  if (pts.length && pts[pts.length - 2] >= reading.ts) return;
  pts.push(reading.ts, reading.value);
  let old = 0;
  const cut = now() - LIVE_WINDOW_MS;
  while (old < pts.length && pts[old] < cut) old += 2;
  if (old) pts.splice(0, old);
}

function liveCanvas(sensor) {
  let c = document.querySelector(`canvas[data-live="${sensor}"]`);
  if (!c) {
    c = el("canvas", { class: "chart", "data-live": sensor, width: "420", height: "200" });
    $("live").append(el("div", { class: "chartbox" },
      el("h3", {}, sensor + " ", el("span", { class: "muted", "data-live-note": sensor })), c));
  }
  return c;
}

function drawLive(sensor) {
  const m = live.get(sensor);
  if (!m) return;
  const { names, total } = chartDevices(sensor);
  let unit = "";
  for (const n of names) unit = devices.get(n).sensors[sensor].unit || unit;
  const series = names.map((dev, i) => ({ label: dev, color: COLORS[i], points: m.get(dev) || [] }));
  const t1 = now();
  const canvas = liveCanvas(sensor);
  drawChart(canvas, series, t1 - LIVE_WINDOW_MS, t1, unit);
  setText(document.querySelector(`[data-live-note="${sensor}"]`),
    total > names.length ? `(${names.length} of ${total} devices: filter to choose)` : "");
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

// One checkbox per charted device (those the filter shows, up to MAX_SERIES); checked unless
// the user took it off.
function refreshHistoryDevices() {
  const sensor = $("h-sensor").value;
  const box = $("h-devices");
  const { names, total } = chartDevices(sensor);
  const note = total > names.length ? ` (${names.length} of ${total}: filter to choose)` : "";
  if (names.join() === [...box.querySelectorAll("input")].map((i) => i.value).join() && box.dataset.note === note) return;
  box.dataset.note = note;
  box.replaceChildren(...names.map((n) => el("label", {},
    el("input", Object.assign({
      type: "checkbox", value: n,
      onchange: (ev) => { if (ev.target.checked) unchecked.delete(n); else unchecked.add(n); loadHistorySoon(); },
    }, unchecked.has(n) ? {} : { checked: "" })),
    " " + n)), note);
  loadHistorySoon();
}

let historySeq = 0;
async function loadHistory() {
  const sensor = $("h-sensor").value;
  const canvas = $("h-chart");
  if (!sensor) return;
  const names = [...$("h-devices").querySelectorAll("input")].map((i) => i.value);
  const chosen = [...$("h-devices").querySelectorAll("input:checked")].map((i) => i.value);
  const seq = ++historySeq;
  const buckets = Math.max(50, Math.min(2000, Math.round(canvas.clientWidth || 900)));
  const t1 = now();
  const t0 = t1 - { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 }[historyRange];
  let unit = "";
  const answers = await Promise.all(chosen.map((dev) =>
    api(`/api/history/${encodeURIComponent(dev)}/${encodeURIComponent(sensor)}?since=${historyRange}&buckets=${buckets}`)
      .then((s) => ({ dev, s }), (e) => ({ dev, e }))));
  const series = [];
  const notes = [];
  for (const { dev, s, e } of answers) {
    if (s) {
      unit = s.unit || unit;
      const points = [];
      for (const b of s.buckets) points.push((b.first_ms + b.last_ms) / 2, b.mean);
      series.push({ label: dev, color: COLORS[Math.max(0, names.indexOf(dev)) % COLORS.length], points });
      notes.push(`${dev}: ${s.points} points`);
    } else {
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
      const level = b.dataset.action === "set" ? Number($("level").value) : undefined;
      command(kind, name || null, b.dataset.action, $("output").value.trim() || null, level);
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
  setInterval(() => { secondDue = true; schedule(); }, 1000);
  setInterval(loadHistory, 60000);
  start();
});
