// p2pfs tracker dashboard: reads the /events stream (one JSON snapshot per second) and draws it.
// Every string that came from the network (file names, addresses, content ids) is inserted with
// textContent, never as markup: a file named <img src=x onerror=alert(1)> shows exactly that.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = fromHash();
function fromHash() {
  try { return decodeURIComponent((location.hash.match(/^#file=(.*)$/) || [])[1] || ""); }
  catch (e) { return ""; }  // (a hand-edited, malformed #file=)
}
let source = null;
let last = null;

// -- formatting --------------------------------------------------------------------------------------
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
function size(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 2 : 1)) + " " + UNITS[unit];
}
function rate(bytesPerSecond) {
  return bytesPerSecond === null || bytesPerSecond === undefined ? "–" : size(bytesPerSecond) + "/s";
}
function count(n) { return n === null || n === undefined ? "–" : n.toLocaleString("en-US"); }

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

// Rows are kept by key and updated in place, so a second's update never rebuilds the table.
function syncRows(tbody, items, key, build, update) {
  const existing = new Map();
  for (const tr of Array.from(tbody.rows)) existing.set(tr.dataset.key, tr);
  let previous = null;
  for (const item of items) {
    const k = key(item);
    let tr = existing.get(k);
    if (tr) existing.delete(k);
    else { tr = build(item); tr.dataset.key = k; }
    update(tr, item);
    const next = previous ? previous.nextSibling : tbody.firstChild;
    if (tr !== next) tbody.insertBefore(tr, next);
    previous = tr;
  }
  for (const tr of existing.values()) tr.remove();
}

function setText(td, text) { if (td.textContent !== text) td.textContent = text; }

// -- files -------------------------------------------------------------------------------------------
function buildFileRow(file) {
  const tr = document.createElement("tr");
  tr.append(cell(""), cell("", "num"), cell("", "num"), cell("", "mono"), cell("", "num"));
  const bar = document.createElement("td");
  const wrap = document.createElement("div"); wrap.className = "bar";
  const track = document.createElement("div"); track.className = "track";
  const fill = document.createElement("div"); fill.className = "fill";
  const pct = document.createElement("span"); pct.className = "pct";
  track.append(fill); wrap.append(track, pct); bar.append(wrap);
  tr.append(bar, cell("", "num"));
  tr.addEventListener("click", () => choose(tr.dataset.key));
  return tr;
}

function updateFileRow(tr, file) {
  const c = tr.cells;
  const label = file.collection_files !== null ? file.name + "/" : file.name;
  setText(c[0], label);
  c[0].title = label;
  setText(c[1], size(file.size));
  setText(c[2], count(file.chunks));
  setText(c[3], file.content_id ? file.content_id.slice(0, 12) : "unverified");
  c[3].title = file.content_id || "published without chunk hashes";
  setText(c[4], file.seeders + " / " + file.holders);
  c[4].title = file.seeders + " complete of " + file.holders + " holders";
  const pct = Math.floor(file.completeness * 1000) / 10;
  c[5].querySelector(".fill").style.width = pct + "%";
  setText(c[5].querySelector(".pct"), pct.toFixed(pct < 100 ? 1 : 0) + "%");
  setText(c[6], file.rate ? rate(file.rate) : "–");
  tr.classList.toggle("selected", file.name === selected);
}

// -- peers -------------------------------------------------------------------------------------------
function buildPeerRow() {
  const tr = document.createElement("tr");
  tr.append(cell("", "mono"), cell("", "num"), cell("", "num"), cell("", "num"), cell("", "num"),
            cell("", "num"), cell("", "num"));
  return tr;
}

function updatePeerRow(tr, peer) {
  const c = tr.cells;
  setText(c[0], peer.address);
  setText(c[1], count(peer.files));
  setText(c[2], count(peer.chunks));
  setText(c[3], rate(peer.upload_rate));
  setText(c[4], rate(peer.download_rate));
  setText(c[5], size(peer.uploaded));
  setText(c[6], size(peer.downloaded));
}

// -- the chosen file ---------------------------------------------------------------------------------
function holderColor(holders, max) {
  if (holders <= 0) return "#e5575b";             // a chunk nobody holds (the file is being delisted)
  if (holders < 1) holders = 1;
  const top = Math.max(max, 2);
  const t = top <= 1 ? 1 : (holders - 1) / (top - 1);
  // from a dim blue (one holder: only its publisher) to a bright teal (everyone has it)
  const from = [38, 72, 110], to = [92, 214, 190];
  const mix = from.map((f, i) => Math.round(f + (to[i] - f) * Math.min(1, t)));
  return "rgb(" + mix.join(",") + ")";
}

function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  return [width, height, ratio];
}

function drawAvailability(detail) {
  const canvas = $("availability");
  const [width, height] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (!detail) { canvas.dataset.total = ""; canvas.dataset.bins = "0"; return; }
  const bins = detail.availability.bins;
  const max = detail.availability.max;
  // more bins than pixels: each column shows the mean of the bins it covers
  const columns = Math.min(bins.length, width);
  for (let x = 0; x < columns; x++) {
    const first = Math.floor(x * bins.length / columns);
    const end = Math.max(first + 1, Math.floor((x + 1) * bins.length / columns));
    let sum = 0;
    for (let i = first; i < end; i++) sum += bins[i];
    ctx.fillStyle = holderColor(sum / (end - first), max);
    const left = Math.floor(x * width / columns), right = Math.floor((x + 1) * width / columns);
    ctx.fillRect(left, 0, Math.max(1, right - left - (columns < width / 3 ? 1 : 0)), height);
  }
  let total = 0;
  for (const b of bins) total += b;
  canvas.dataset.total = String(total);
  canvas.dataset.bins = String(bins.length);
  drawLegend(max, detail.availability.chunks_per_bin);
}

function drawLegend(max, perBin) {
  const legend = $("legend");
  const top = Math.max(max, 1);
  const steps = top <= 8 ? Array.from({ length: top }, (_, i) => i + 1)
    : [1, Math.round(top / 4), Math.round(top / 2), Math.round(3 * top / 4), top];
  const key = steps.join(",") + "|" + perBin;
  if (legend.dataset.key === key) return;
  legend.dataset.key = key;
  legend.replaceChildren();
  const title = document.createElement("span");
  title.textContent = "holders";
  legend.append(title);
  for (const holders of steps) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = holderColor(holders, top);
    span.append(swatch, document.createTextNode(String(holders)));
    legend.append(span);
  }
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = perBin > 1 ? "each column: the mean of " + perBin + " chunks" : "one column per chunk";
  legend.append(note);
}

function drawThroughput(detail, now) {
  const canvas = $("throughput");
  const [width, height, ratio] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const span = 300;  // seconds shown
  const pad = 8 * ratio, axis = 84 * ratio, bottom = 22 * ratio;
  const times = detail ? detail.throughput.times : [];
  const rates = detail ? detail.throughput.rates : [];
  let peak = 0;
  for (const r of rates) peak = Math.max(peak, r);
  const top = peak > 0 ? peak * 1.15 : 1;
  ctx.strokeStyle = "#243040"; ctx.lineWidth = 1;
  ctx.fillStyle = "#7d8b99"; ctx.font = (11 * ratio) + "px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  for (const f of [0, 0.5, 1]) {
    const y = Math.round(height - bottom - f * (height - pad - bottom)) + 0.5;
    ctx.beginPath(); ctx.moveTo(axis, y); ctx.lineTo(width - pad, y); ctx.stroke();
    ctx.fillText(peak > 0 ? rate(top * f) : (f === 0 ? "0" : ""), pad, y);
  }
  const x = (t) => axis + (width - pad - axis) * (1 - Math.min(span, Math.max(0, now - t)) / span);
  const y = (r) => height - bottom - (r / top) * (height - pad - bottom);
  ctx.textBaseline = "alphabetic";
  ctx.fillText("5 min ago", axis, height - 6 * ratio);
  ctx.textAlign = "right";
  ctx.fillText("now", width - pad, height - 6 * ratio);
  ctx.textAlign = "left";
  if (times.length > 1) {
    ctx.beginPath();
    ctx.moveTo(x(times[0]), y(0));
    for (let i = 0; i < times.length; i++) ctx.lineTo(x(times[i]), y(rates[i]));
    ctx.lineTo(x(times[times.length - 1]), y(0));
    ctx.closePath();
    ctx.fillStyle = "rgba(79, 184, 201, 0.18)"; ctx.fill();
    ctx.beginPath();
    for (let i = 0; i < times.length; i++) {
      if (i === 0) ctx.moveTo(x(times[i]), y(rates[i])); else ctx.lineTo(x(times[i]), y(rates[i]));
    }
    ctx.strokeStyle = "#4fb8c9"; ctx.lineWidth = 2 * ratio; ctx.stroke();
  }
}

function showDetail(detail, now) {
  setText($("detail-name"), detail ? (detail.collection_files !== null ? detail.name + "/" : detail.name) : "");
  const meta = !detail
    ? (selected ? "no longer listed" : "choose a file")
    : size(detail.size) + " · " + count(detail.chunks) + " chunks of " + size(detail.chunk_size) +
      " · " + detail.seeders + " of " + detail.holders + " holders complete" +
      " · rarest chunk: " + detail.availability.rarest +
      (detail.collection_files !== null ? " · " + count(detail.collection_files) + " files" : "");
  setText($("detail-meta"), meta);
  setText($("rate-now"), detail && detail.rate ? rate(detail.rate) : "");
  drawAvailability(detail);
  drawThroughput(detail, now);
}

// -- the stream --------------------------------------------------------------------------------------
function render(snapshot) {
  last = snapshot;
  const totals = snapshot.totals;
  setText($("total-peers"), count(totals.peers));
  setText($("total-files"), count(totals.files));
  setText($("total-down"), totals.reporting ? rate(totals.download_rate) : "–");
  setText($("total-up"), totals.reporting ? rate(totals.upload_rate) : "–");
  if (!selected && snapshot.files.length) choose(snapshot.files[0].name);
  syncRows($("files").tBodies[0], snapshot.files, (f) => f.name, buildFileRow, updateFileRow);
  syncRows($("peers").tBodies[0], snapshot.peers, (p) => p.address, buildPeerRow, updatePeerRow);
  $("files-empty").hidden = snapshot.files.length > 0;
  $("peers-empty").hidden = snapshot.peers.length > 0;
  setText($("files-note"), snapshot.files.length < totals.files ? "first " + snapshot.files.length + " of " + count(totals.files) : "");
  setText($("peers-note"), snapshot.peers.length < totals.peers ? "first " + snapshot.peers.length + " of " + count(totals.peers) : "");
  showDetail(snapshot.file && snapshot.file.name === selected ? snapshot.file : null, snapshot.time);
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  setText($("status-text"), text);
}

function connect() {
  if (source) source.close();
  source = new EventSource("/events" + (selected ? "?file=" + encodeURIComponent(selected) : ""));
  source.onmessage = (event) => {
    render(JSON.parse(event.data));
    setStatus("live", "live · " + new Date().toLocaleTimeString("en-GB"));
  };
  source.onerror = () => setStatus("lost", "reconnecting…");  // (EventSource retries by itself)
}

function choose(name) {
  if (name === selected && source) return;
  selected = name;
  history.replaceState(null, "", "#file=" + encodeURIComponent(name));
  for (const tr of $("files").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.key === name);
  if (last) showDetail(null, last.time);
  connect();
}

window.addEventListener("resize", () => { if (last) render(last); });
connect();
