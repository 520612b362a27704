// qnode dashboard: one WebSocket to the daemon's dashboard server, plots on plain canvas.
// Everything the page shows arrives as {"type": "hello"} then {"type": "update"} messages;
// actions go to POST /api/action with the token and the user's name.
"use strict";

const COLORS = ["#2b5fd9", "#d9482b", "#1a9e5c", "#9c36b5", "#e09b00", "#0f8fa8", "#7a5c3e", "#c2185b",
                "#5f6b7a", "#3f51b5", "#8bc34a", "#ff5722"];
const RATE_WINDOW_S = 60;
const TRACE_WINDOW_S = 30;

const $ = (id) => document.getElementById(id);

// State the tests read too (window.qnode).
const state = {
  info: null, ws: null, connected: false, startedWall: null, view: null,
  updates: 0, updateTimes: [], updatesHz: 0, rateSamples: 0, lastUpdate: null,
  rates: [],            // [{t, rates_hz}]
  coinc: [],            // [{t, coinc, herald}]
  loops: {},            // name -> {status, trace: [{time_s, ...}]}
  reconnects: 0,
};
window.qnode = state;

// --- formatting ---------------------------------------------------------------------------

function siRate(hz) {
  if (hz === null || hz === undefined || !isFinite(hz)) return "–";
  const a = Math.abs(hz);
  if (a >= 999.95e3) return (hz / 1e6).toFixed(3) + " M";  // thresholds where rounding changes the unit
  if (a >= 999.95) return (hz / 1e3).toFixed(1) + " k";
  return hz.toFixed(a >= 10 ? 0 : 1);
}
function compact(v) {  // axis labels: 1, 10, 100, 1k, ..., 10M
  for (const [d, u] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) if (Math.abs(v) >= d) return parseFloat((v / d).toPrecision(3)) + u;
  return String(parseFloat(v.toPrecision(3)));
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
  return n + " B";
}
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h} h ${m % 60} min` : `${m} min ${Math.floor(s % 60)} s`;
}
function num(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(parseFloat(v.toPrecision(5)));
  if (Array.isArray(v)) return v.map(num).join(", ");
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (v === null || v === undefined) return "–";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// --- plots ----------------------------------------------------------------------------------

function canvas2d(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return {ctx, w, h};
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

// A plot frame: maps data to pixels, draws axes, grid and labels.
function frame(canvas, {xmin, xmax, ymin, ymax, ylog = false, xlabel = "", ylabel = "", xfmt = (v) => num(v), yfmt}) {
  const {ctx, w, h} = canvas2d(canvas);
  const m = {l: 58, r: 10, t: 8, b: 30};
  const pw = w - m.l - m.r, ph = h - m.t - m.b;
  const ty = ylog ? (v) => Math.log10(Math.max(v, ymin)) : (v) => v;
  const y0 = ty(ymin), y1 = ty(ymax);
  const X = (x) => m.l + (x - xmin) / (xmax - xmin) * pw;
  const Y = (y) => m.t + ph - (ty(y) - y0) / (y1 - y0 || 1) * ph;
  ctx.strokeStyle = "#e6e9ef"; ctx.fillStyle = "#6b7385"; ctx.lineWidth = 1;
  const yticks = ylog ? Array.from({length: Math.floor(y1) - Math.ceil(y0) + 1}, (_, i) => Math.pow(10, Math.ceil(y0) + i))
                      : niceTicks(ymin, ymax, 4);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of yticks) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(m.l, y); ctx.lineTo(m.l + pw, y); ctx.stroke();
    ctx.fillText((yfmt || compact)(v), m.l - 5, y);
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const v of niceTicks(xmin, xmax, Math.max(2, Math.floor(pw / 80)))) {
    const x = Math.round(X(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, m.t); ctx.lineTo(x, m.t + ph); ctx.stroke();
    ctx.fillText(xfmt(v), x, m.t + ph + 4);
  }
  ctx.strokeStyle = "#9aa3b5";
  ctx.strokeRect(m.l + 0.5, m.t + 0.5, pw, ph);
  ctx.fillText(xlabel, m.l + pw / 2, m.t + ph + 17);
  ctx.save(); ctx.translate(11, m.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = "middle";
  ctx.fillText(ylabel, 0, 0); ctx.restore();
  return {ctx, X, Y, m, pw, ph, clip() { ctx.save(); ctx.beginPath(); ctx.rect(m.l, m.t, pw, ph); ctx.clip(); }};
}

function lines(f, series) {
  f.clip();
  for (const s of series) {
    f.ctx.strokeStyle = s.color; f.ctx.lineWidth = 1.6; f.ctx.beginPath();
    let started = false;
    for (const [x, y] of s.points) {
      if (y === null || y === undefined || !isFinite(y)) { started = false; continue; }
      if (started) f.ctx.lineTo(f.X(x), f.Y(y)); else { f.ctx.moveTo(f.X(x), f.Y(y)); started = true; }
    }
    f.ctx.stroke();
  }
  f.ctx.restore();
}

function message(canvas, text) {
  const {ctx, w, h} = canvas2d(canvas);
  ctx.fillStyle = "#6b7385"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.font = "italic 13px system-ui, sans-serif";
  ctx.fillText(text, w / 2, h / 2);
}

// --- panels -------------------------------------------------------------------------------

function channelColor(i) { return COLORS[i % COLORS.length]; }

function drawRates() {
  const canvas = $("rates-plot");
  if (!state.rates.length) { message(canvas, "waiting for rates…"); return; }
  const now = state.rates[state.rates.length - 1].t;
  const names = state.info ? state.info.channels.map((c) => c.name) : Object.keys(state.rates[0].rates_hz);
  let hi = 10;
  for (const r of state.rates) for (const n of names) hi = Math.max(hi, r.rates_hz[n] || 0);
  const f = frame(canvas, {xmin: -RATE_WINDOW_S, xmax: 0, ymin: 1, ymax: Math.pow(10, Math.ceil(Math.log10(hi * 1.5))),
                           ylog: true, xlabel: "seconds ago", ylabel: "counts / s", xfmt: (v) => v.toFixed(0)});
  lines(f, names.map((n, i) => ({color: channelColor(i),
    points: state.rates.map((r) => [r.t - now, Math.max(r.rates_hz[n] || 0, 1)])})));
  const last = state.rates[state.rates.length - 1].rates_hz;
  const cells = names.map((n, i) => `<td><span class="swatch" style="background:${channelColor(i)}"></span>` +
    `${esc(state.info ? state.info.channels[i].index : i)} ${esc(n)}</td><td class="v">${siRate(last[n])}/s</td>`);
  let html = "";
  for (let i = 0; i < cells.length; i += 4) html += "<tr>" + cells.slice(i, i + 4).join("") + "</tr>";
  $("rates-table").innerHTML = html;
}

function drawCoincidences() {
  const canvas = $("coinc-plot");
  const pts = state.coinc.filter((p) => p.coinc !== null || p.herald !== null);
  if (!pts.length) { message(canvas, "waiting for coincidences…"); return; }
  const now = state.coinc[state.coinc.length - 1].t;
  let hi = 10;
  for (const p of pts) hi = Math.max(hi, p.coinc || 0, p.herald || 0);
  const f = frame(canvas, {xmin: -RATE_WINDOW_S, xmax: 0, ymin: 0.1, ymax: Math.pow(10, Math.ceil(Math.log10(hi * 1.5))),
                           ylog: true, xlabel: "seconds ago", ylabel: "per s", xfmt: (v) => v.toFixed(0)});
  lines(f, [{color: "#2b5fd9", points: pts.map((p) => [p.t - now, p.coinc === null ? null : Math.max(p.coinc, 0.1)])},
            {color: "#d9482b", points: pts.map((p) => [p.t - now, p.herald === null ? null : Math.max(p.herald, 0.1)])}]);
  const ctx = f.ctx;
  ctx.textAlign = "left"; ctx.textBaseline = "top";
  ctx.fillStyle = "#2b5fd9"; ctx.fillText("coincidences", f.m.l + 6, f.m.t + 4);
  ctx.fillStyle = "#d9482b"; ctx.fillText("heralds", f.m.l + 90, f.m.t + 4);
}

function drawG2(g2) {
  const canvas = $("g2-plot");
  if (!g2 || g2.error) { message(canvas, g2 && g2.error ? g2.error : "waiting for the histogram…"); return; }
  const counts = g2.counts, x0 = g2.delays_ps, bin = g2.bin_ps;
  if (!counts.length) { message(canvas, "empty histogram"); return; }
  const hi = Math.max(1, ...counts);
  const f = frame(canvas, {xmin: x0[0] / 1000, xmax: (x0[x0.length - 1] + bin) / 1000, ymin: 0, ymax: hi * 1.08,
                           xlabel: `delay t(${chName(g2.channel_b)}) − t(${chName(g2.channel_a)}) / ns`, ylabel: "pairs / bin"});
  f.clip();
  const ctx = f.ctx;
  ctx.fillStyle = "#2b5fd9";
  const bw = Math.max(1, f.X((x0[0] + bin) / 1000) - f.X(x0[0] / 1000));
  for (let i = 0; i < counts.length; i++) {
    if (!counts[i]) continue;
    const x = f.X(x0[i] / 1000), y = f.Y(counts[i]);
    ctx.fillRect(x, y, bw > 2 ? bw - 0.5 : bw, f.Y(0) - y);
  }
  ctx.restore();
  const parts = [`${(g2.pairs || 0).toLocaleString("en")} pairs in ${g2.duration_s.toFixed(1)} s`];
  if (g2.peak_ps !== null && g2.peak_ps !== undefined) parts.push(`peak ${(g2.peak_ps / 1000).toFixed(2)} ns`);
  if (g2.car !== null && g2.car !== undefined) parts.push(`CAR ${g2.car.toFixed(0)}`);
  if (g2.g2) parts.push(`g2(peak) ${Math.max(...g2.g2).toFixed(1)}`);
  $("g2-caption").textContent = parts.join(" · ");
}

function chName(i) {
  if (!state.info) return String(i);
  const c = state.info.channels.find((c) => c.index === i);
  return c ? c.name : String(i);
}

// The phase lock's status (host/phase_lock.py): state, locked, phase_error_deg, phase_deg,
// actuator_v, ... The trace shows the first of these keys that the loop publishes.
const TRACE_KEYS = ["phase_error_deg", "residual_deg", "error_deg", "phase_deg", "actuator_v", "output_v"];
const STATE_KEYS = ["state", "locked", "running", "enabled"];

function drawLoops() {
  const names = Object.keys(state.loops);
  const box = $("loops");
  if (!names.length) { if (!$("no-loops")) box.innerHTML = '<p class="empty" id="no-loops">no loops running</p>'; return; }
  if ($("no-loops")) box.innerHTML = "";
  for (const name of names) {
    const loop = state.loops[name];
    let el = document.getElementById("loop-" + name);
    if (!el) {
      el = document.createElement("div");
      el.className = "loop"; el.id = "loop-" + name;
      el.innerHTML = `<div class="loop-head"><b>${esc(name)}</b> <span class="state"></span>
        <button class="action" data-loop="${esc(name)}" data-on="1">lock on</button>
        <button class="action" data-loop="${esc(name)}" data-on="0">lock off</button></div>
        <canvas class="plot trace"></canvas><div class="caption"></div>`;
      box.appendChild(el);
      for (const b of el.querySelectorAll("button")) b.onclick = () =>
        act(b.dataset.on === "1" ? "loops.start" : "loops.stop", {name: b.dataset.loop});
    }
    const s = loop.status || {};
    const key = STATE_KEYS.find((k) => k in s);
    const st = el.querySelector(".state");
    const value = key === undefined ? "running" : (typeof s[key] === "boolean" ? (s[key] ? key : "not " + key) : String(s[key]));
    st.textContent = value;
    st.className = "state " + (/unlock|relock|no_|not |error|fail|stop/i.test(value) ? "bad"
                               : /^(locked|running|on)$/i.test(value) ? "good" : "");
    const tkey = TRACE_KEYS.find((k) => loop.trace.length && k in loop.trace[loop.trace.length - 1]) ||
      (loop.trace.length ? Object.keys(loop.trace[loop.trace.length - 1]).find((k) => k !== "time_s" && k !== "seq") : undefined);
    const canvas = el.querySelector("canvas");
    if (!tkey) { message(canvas, "no numeric status to plot"); }
    else {
      const now = loop.trace[loop.trace.length - 1].time_s;
      const pts = loop.trace.filter((p) => now - p.time_s <= TRACE_WINDOW_S && typeof p[tkey] === "number");
      let lo = Math.min(...pts.map((p) => p[tkey])), hi = Math.max(...pts.map((p) => p[tkey]));
      if (tkey.endsWith("_deg")) { lo = Math.min(lo, -20); hi = Math.max(hi, 20); }
      if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
      const f = frame(canvas, {xmin: -TRACE_WINDOW_S, xmax: 0, ymin: lo, ymax: hi, xlabel: "seconds ago", ylabel: tkey,
                               xfmt: (v) => v.toFixed(0)});
      lines(f, [{color: "#9c36b5", points: pts.map((p) => [p.time_s - now, p[tkey]])}]);
    }
    el.querySelector(".caption").textContent = Object.entries(s).filter(([k]) => k !== "time_s" && k !== "seq")
      .map(([k, v]) => `${k} ${num(v)}`).join(" · ");
  }
}

function showInstruments(readings, states) {
  const names = Object.keys(readings || {});
  if (!names.length) return;
  const skip = new Set(["name", "identity", "address", "model"]);
  const html = names.map((n) => {
    const r = readings[n] || {};
    const rows = Object.entries(r).filter(([k]) => !skip.has(k)).map(([k, v]) => {
      const hl = /temperature|_k$|emission|power_dbm|wavelength/.test(k) ? ' class="hl"' : "";
      return `<tr><th>${esc(k)}</th><td${hl}>${esc(num(v))}</td></tr>`;
    }).join("");
    const bad = r.suspect || r.error || (states && states[n] && states[n] !== "ok");
    return `<div class="card${bad ? " suspect" : ""}" data-instrument="${esc(n)}"><h4>${esc(n)} ` +
      `<small>${esc(r.model || "")}</small></h4><table class="kv">${rows}</table></div>`;
  }).join("");
  $("instruments").innerHTML = `<div class="instruments">${html}</div>`;
}

function showRecording(rec) {
  if (!rec) return;
  const on = !!rec.recording;
  const r = on ? rec : (rec.last || {});
  $("rec-state").innerHTML = on ? '<span class="rec-on">● recording</span>' : (rec.last ? "off (last recording below)" : "off");
  $("rec-state").dataset.recording = on ? "1" : "0";
  $("rec-file").textContent = r.path || "–";
  $("rec-size").textContent = bytes(r.bytes);
  $("rec-duration").textContent = duration(r.duration_s);
  $("rec-tags").textContent = r.tags === undefined ? "–" : r.tags.toLocaleString("en");
  $("rec-losses").textContent = r.lost_events === undefined ? "–" :
    `${r.lost_events} events, ${r.dropped_batches} batches dropped${r.error ? " · " + r.error : ""}`;
}

const LOG_KEEP = 300;
function appendLog(lines) {
  if (!lines || !lines.length) return;
  const box = $("log");
  if ($("no-log")) box.innerHTML = "";
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  for (const l of lines) {
    const div = document.createElement("div");
    div.className = l.level + (l.logger === "qnode.actions" ? " action" : "");
    const t = new Date(l.time_s * 1000).toLocaleTimeString("en-GB");
    div.textContent = `${t} ${l.level.padEnd(7)} ${l.logger}: ${l.message}`;
    box.appendChild(div);
  }
  while (box.childElementCount > LOG_KEEP) box.removeChild(box.firstChild);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

// --- connection ---------------------------------------------------------------------------

function setConnected(on) {
  state.connected = on;
  $("conn").textContent = on ? "live" : "reconnecting";
  $("conn").className = "conn " + (on ? "live" : "off");
  $("banner").classList.toggle("hidden", on);
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "hello") hello(msg);
    else if (msg.type === "update") update(msg);
    else if (msg.type === "view") {
      state.view = msg.view;
      if (msg.error) actionStatus(msg.error, false);
    }
  };
  ws.onopen = () => setConnected(true);
  ws.onclose = () => {
    setConnected(false);
    state.reconnects += 1;
    setTimeout(connect, 1000);
  };
}

function hello(msg) {
  // The server sends its rates history, log and loop traces to every new connection: start those
  // afresh. The coincidence history is the page's own; it goes only when the daemon is a new one.
  if (state.startedWall !== null && state.startedWall !== msg.started_wall) {
    state.coinc = []; state.rateSamples = 0;
  }
  state.rates = []; state.loops = {}; state.instrumentsTime = undefined;
  $("loops").innerHTML = '<p class="empty" id="no-loops">no loops running</p>';
  $("log").innerHTML = '<p class="empty" id="no-log">nothing logged yet</p>';
  const wanted = state.view;  // keep the page's histogram choice across reconnects
  state.info = msg; state.startedWall = msg.started_wall; state.view = msg.view;
  $("node").textContent = msg.node;
  document.title = `${msg.node}: qnode dashboard`;
  for (const id of ["g2-a", "g2-b"]) {
    const sel = $(id), cur = sel.value;
    sel.innerHTML = msg.channels.map((c) => `<option value="${c.index}">${c.index} ${esc(c.name)}</option>`).join("");
    if (cur !== "") sel.value = cur;
  }
  $("reg-names").innerHTML = (msg.registers || []).map((n) => `<option value="${esc(n)}">`).join("");
  if (wanted) sendView(wanted);
  else { $("g2-a").value = msg.view[0]; $("g2-b").value = msg.view[1]; $("g2-bin").value = msg.view[2]; $("g2-range").value = msg.view[3]; }
  updateMode();
}

function update(msg) {
  state.updates += 1; state.lastUpdate = msg;
  const now = performance.now();
  state.updateTimes.push(now);
  while (state.updateTimes.length && now - state.updateTimes[0] > 2000) state.updateTimes.shift();
  if (state.updateTimes.length > 1)
    state.updatesHz = (state.updateTimes.length - 1) / ((now - state.updateTimes[0]) / 1000);
  $("updates-hz").textContent = state.updatesHz.toFixed(1);
  if (msg.daemon_error) { actionStatus("daemon: " + msg.daemon_error, false); return; }
  for (const r of msg.rates) state.rates.push({t: r.time_s, rates_hz: r.rates_hz});
  state.rateSamples += msg.rates.length;
  while (state.rates.length && state.rates[state.rates.length - 1].t - state.rates[0].t > RATE_WINDOW_S + 1) state.rates.shift();
  const g2 = msg.g2;
  state.coinc.push({t: msg.time_s, coinc: g2 && !g2.error ? g2.coincidence_hz : null, herald: msg.heralds ? msg.heralds.rate_hz : null});
  while (state.coinc.length && msg.time_s - state.coinc[0].t > RATE_WINDOW_S + 1) state.coinc.shift();
  for (const [name, l] of Object.entries(msg.loops || {})) {
    const loop = state.loops[name] || (state.loops[name] = {status: null, trace: []});
    loop.status = l.status;
    loop.trace.push(...l.trace);
    while (loop.trace.length && loop.trace[loop.trace.length - 1].time_s - loop.trace[0].time_s > TRACE_WINDOW_S + 1) loop.trace.shift();
  }
  $("events-hz").textContent = siRate(msg.events_hz) + "/s";
  $("uptime").textContent = duration(msg.uptime_s);
  const L = msg.losses || {};
  const lost = (L.in_band_events || 0) + (L.link_words || 0) + (L.invalid_words || 0) + (L.recorder_dropped_batches || 0);
  $("losses").textContent = lost ? lost.toLocaleString("en") : "none";
  $("herald-hz").textContent = siRate(msg.heralds ? msg.heralds.rate_hz : null);
  $("herald-total").textContent = msg.heralds ? msg.heralds.total.toLocaleString("en") : "0";
  $("coinc-hz").textContent = siRate(g2 && !g2.error ? g2.coincidence_hz : null);
  if (g2 && !g2.error)
    $("coinc-label").textContent = `coincidences/s ${chName(g2.channel_a)}–${chName(g2.channel_b)}, ±${g2.coincidence_window_ps / 2000} ns at the peak`;
  showRecording(msg.recording);
  if (msg.instruments_time_s !== state.instrumentsTime) {
    state.instrumentsTime = msg.instruments_time_s;
    showInstruments(msg.instruments, msg.instrument_state);
  }
  appendLog(msg.log);
  pending = msg;
  if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); }
}

let pending = null, drawQueued = false;
function draw() {
  drawQueued = false;
  drawRates();
  drawCoincidences();
  if (pending) drawG2(pending.g2);
  drawLoops();
}

function sendView(view) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const [a, b, bin, range] = view;
  state.ws.send(JSON.stringify({type: "view", channel_a: a, channel_b: b, bin_ps: bin, range_ps: range}));
}

// --- actions ------------------------------------------------------------------------------

function actionStatus(text, ok) {
  const el = $("action-status");
  el.textContent = text;
  el.className = "action-status " + (ok ? "ok" : "refused");
}

function updateMode() {
  const has = $("token").value !== "";
  $("mode").textContent = has ? "actions enabled" : "read-only";
  $("mode").className = "mode " + (has ? "rw" : "ro");
  $("mode").title = state.info && !state.info.token_configured ? "this daemon has no dashboard token: actions are refused" : "";
}

async function act(method, params) {
  const body = {method, params, token: $("token").value || null, user: $("user").value || null};
  try {
    const resp = await fetch("/api/action", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const reply = await resp.json();
    if (reply.error) actionStatus(`${method}: ${reply.error.type}: ${reply.error.message}`, false);
    else actionStatus(`${method}: done`, true);
    return reply;
  } catch (err) {
    actionStatus(`${method}: ${err}`, false);
    return null;
  }
}

function wire() {
  $("user").value = localStorage.getItem("qnode.user") || "";
  $("token").value = sessionStorage.getItem("qnode.token") || "";
  $("user").oninput = () => localStorage.setItem("qnode.user", $("user").value);
  $("token").oninput = () => { sessionStorage.setItem("qnode.token", $("token").value); updateMode(); };
  $("g2-apply").onclick = () => sendView([+$("g2-a").value, +$("g2-b").value, +$("g2-bin").value, +$("g2-range").value]);
  $("rec-start").onclick = () => {
    const path = $("rec-path").value.trim();
    act("record.start", path ? {path} : {});
  };
  $("rec-stop").onclick = () => act("record.stop", {});
  $("reg-write").onclick = () => act("registers.write", {name: $("reg-name").value.trim(),
    index: parseInt($("reg-index").value || "0", 10), value: parseInt($("reg-value").value, 10)});
  window.addEventListener("resize", () => { if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); } });
  updateMode();
  drawRates(); drawCoincidences(); drawG2(null);
  connect();
}

wire();
