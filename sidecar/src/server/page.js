// logstream's web page: sources, lines, find, follow, at 10k lines/s.
// Plain JS, no build step, no network access but this server (/ws, /sources,
// /stream for a refused handshake's reason). Log text only ever reaches the
// DOM through textContent.
"use strict";

const RH = 18;                 // row height (px), as --rh in page.css
const OVERSCAN = 10;           // rows rendered above and below the viewport
const MAX_CONT = 2000;         // continuation lines kept in one group
const MAX_TEXT = 4000;         // characters of a line rendered in a row
const URL_EVERY_MS = 1000;     // the URL's cursor is refreshed at most this often
const SOURCES_EVERY_MS = 2000; // /sources poll

const $ = id => document.getElementById(id);
const logEl = $("log"), spacer = $("spacer"), statusEl = $("status");
const params = new URLSearchParams(location.search);
const token = params.get("access_token") || "";

// ---------------------------------------------------------------------------
// State

const opt = {
  file: params.get("file") || "", pod: params.get("pod") || "", container: params.get("container") || "",
  level: params.get("level") || "", grep: params.get("grep") || "", icase: params.get("icase") === "1",
  utc: params.get("tz") === "utc",
  cap: clamp(Number(params.get("cap")) || 20000, 100, 200000),
  tail: clamp(Number(params.get("tail") || 500), 0, 100000),
};
let cursor = params.get("resume") || "";  // last cursor received
let viewCursor = cursor;                   // cursor of the last batch shown (the URL's)
let ws = null, retry = 500, retryTimer = 0, moveAfter = null, everOpen = false, reconnecting = false, settleNotice = null;
let pending = [];            // filters of subscribes sent, not yet answered, oldest first
let buffered = [];           // records and gaps that arrived meanwhile
let items = [];              // what the view holds, oldest first
let openRows = 0;            // extra rows of expanded items
let starts = null;           // row index of each item, when openRows > 0
let follow = true, paused = false, held = [], heldCursor = "", heldDropped = 0, newLines = 0;
let dirty = true, lastUrlAt = 0, role = "", droppedRows = 0;
let hl = null;               // RegExp of the grep, for highlighting
const sources = new Map();   // key -> {ns, pod, container, file, lines, history, last_ts, gone}
const bySid = new Map();     // sid -> source key
const stats = { received: 0, missed: 0, batches: 0, rendered: 0 };
window.logstreamStats = stats; // read by the tests and the frame-time bench
// What the view holds (every line, continuation lines included), its
// notices and the cursor the URL carries: for the tests.
stats.lines = () => items.flatMap(it => it.r ? [it.r.line, ...(it.cont || []).map(c => c.line)] : []);
stats.notices = () => items.filter(it => it.notice !== undefined).map(it => it.notice);
stats.items = () => items.length;
stats.cursor = () => viewCursor;
stats.follow = () => follow;

function clamp(n, lo, hi) { return Math.min(hi, Math.max(lo, n)); }

// ---------------------------------------------------------------------------
// Lines

const CONT = /^(?:\s+\S|\s*at\s|\s*\.\.\.\s*\d+\s+more|Caused by[: ]|Traceback \(most recent call last\)|\s*File ")/;
const EXC = /^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)(?::|$)/;

function srcKey(r) { return (r.ns || "") + "\u0000" + (r.pod || "") + "\u0000" + (r.container || "") + "\u0000" + (r.file || ""); }

// A line's source joins the panel at once (counters come from /sources).
function keyOf(r) {
  let k = bySid.get(r.sid);
  if (k === undefined) { k = srcKey(r); bySid.set(r.sid, k); }
  const s = sources.get(k);
  if (!s) {
    sources.set(k, { ns: r.ns || "", pod: r.pod || "", container: r.container || "", file: r.file || "",
      lines: r.seq || 0, history: 1, last_ts: r.ts, gone: false });
    sourcesDirty = true;
  } else if (s.gone) { s.gone = false; sourcesDirty = true; }
  return k;
}

// One item per line, or a line and its continuation lines (a stack trace):
// a continuation joins the last line of its own source, even when an
// aggregator interleaved other sources' lines between them.
const lastBySid = new Map(); // sid -> its newest item
function append(recs) {
  for (const r of recs) {
    stats.received++;
    const key = keyOf(r);
    const head = lastBySid.get(r.sid);
    if (head && !head.dead && isCont(head, r.line)) {
      if (!head.cont) head.cont = [];
      if (head.cont.length < MAX_CONT) {
        head.cont.push(r);
        if (head.open) { openRows++; starts = null; }
      }
      continue;
    }
    const it = { r, key, open: false, cont: null, view: null, dead: false };
    items.push(it);
    lastBySid.set(r.sid, it);
    if (!follow) newLines++;
  }
  droppedRows += trim();
}

function isCont(head, line) {
  if (CONT.test(line)) return true;
  // An exception line after an error's line (Java's `x.y.SomeException: why`
  // before its `at` lines), or closing a Python traceback (`ValueError: why`).
  return EXC.test(line) && (!!head.cont || /^(?:warn|error|fatal)$/.test(head.r.level || ""));
}

function notice(text, cls) {
  const it = { notice: text, cls: cls || "", open: false };
  items.push(it);
  dirty = true;
  return it;
}

function trim() {
  const over = items.length - opt.cap;
  if (over <= 0) return 0;
  let rows = over;
  for (let i = 0; i < over; i++) {
    const it = items[i];
    it.dead = true;
    if (it.open) { rows += extra(it); openRows -= extra(it); }
  }
  items.splice(0, over);
  starts = null;
  return rows;
}

function clearView() { items = []; lastBySid.clear(); openRows = 0; starts = null; newLines = 0; dirty = true; }

// Rows an item adds when expanded.
function extra(it) { return it.open ? (it.cont ? it.cont.length : 0) + fieldsOf(it).length : 0; }

// JSON lines: message and fields; logfmt: key ranges. Computed when shown.
function viewOf(it) {
  if (it.view) return it.view;
  const line = it.r.line;
  let v = { text: line, fields: null, keys: null };
  if (line.length > 1 && line[0] === "{") {
    try {
      const o = JSON.parse(line);
      if (o && typeof o === "object" && !Array.isArray(o)) {
        const mk = ["msg", "message", "MESSAGE", "log", "text"].find(k => typeof o[k] === "string");
        const fields = [];
        for (const [k, val] of Object.entries(o)) {
          if (k === mk) continue;
          fields.push([k, typeof val === "string" ? val : JSON.stringify(val)]);
        }
        v = { text: mk ? o[mk] : "", fields, keys: null };
      }
    } catch (_) { /* not JSON: shown as text */ }
  }
  if (!v.fields) {
    const keys = [];
    const re = /(?:^|\s)([A-Za-z_][\w.\-/]*)=(?:"(?:[^"\\]|\\.)*"|[^\s"]*)/g;
    let m;
    while ((m = re.exec(line)) && keys.length < 64) {
      const at = m.index + m[0].indexOf(m[1]);
      keys.push([at, at + m[1].length]);
    }
    if (keys.length >= 2) v.keys = keys;
  }
  it.view = v;
  return v;
}
function fieldsOf(it) { return it.r ? (viewOf(it).fields || []) : []; }

// ---------------------------------------------------------------------------
// Rendering: a virtual list of fixed-height rows.

function rowCount() { return items.length + openRows; }

function ensureStarts() {
  if (openRows === 0 || starts) return;
  starts = new Uint32Array(items.length);
  let row = 0;
  for (let i = 0; i < items.length; i++) { starts[i] = row; row += 1 + extra(items[i]); }
}

// The item and sub-row at `row`.
function at(row) {
  if (openRows === 0) return [row, 0];
  ensureStarts();
  let lo = 0, hi = items.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return [lo, row - starts[lo]];
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pad(n, w) { return String(n).padStart(w, "0"); }
function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts.length > 23 ? ts.slice(0, 23) + "Z" : ts);
  if (isNaN(d)) return ts;
  return opt.utc
    ? pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2) + ":" + pad(d.getUTCSeconds(), 2) + "." + pad(d.getUTCMilliseconds(), 3)
    : pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" + pad(d.getSeconds(), 2) + "." + pad(d.getMilliseconds(), 3);
}

let manyPods = false;
function srcLabel(r) {
  return [manyPods ? r.pod : "", manyPods ? r.container : "", r.file].filter(Boolean).join("/");
}

// Text with logfmt keys and grep matches as spans (textContent only).
function richText(parent, text, keys) {
  if (text.length > MAX_TEXT) text = text.slice(0, MAX_TEXT) + "…";
  const marks = [];
  if (hl && text) {
    hl.lastIndex = 0;
    let m;
    while ((m = hl.exec(text)) && marks.length < 200) {
      if (m[0].length === 0) { hl.lastIndex++; continue; }
      marks.push([m.index, m.index + m[0].length]);
    }
  }
  if (!marks.length && !keys) { parent.append(text); return; }
  const cuts = new Set([0, text.length]);
  for (const [a, b] of marks) { cuts.add(a); cuts.add(b); }
  for (const [a, b] of keys || []) { cuts.add(Math.min(a, text.length)); cuts.add(Math.min(b, text.length)); }
  const pts = [...cuts].sort((a, b) => a - b);
  for (let i = 0; i + 1 < pts.length; i++) {
    const a = pts[i], b = pts[i + 1], piece = text.slice(a, b);
    const isMark = marks.some(([x, y]) => x <= a && b <= y);
    const isKey = keys && keys.some(([x, y]) => x <= a && b <= y);
    let node = isKey ? el("span", "k", piece) : document.createTextNode(piece);
    if (isMark) { const m = el("mark"); m.append(node); node = m; }
    parent.append(node);
  }
}

function lineRow(it) {
  const r = it.r, v = viewOf(it);
  const d = el("div", "l " + (r.level || "") + (it.cont ? " group" : ""));
  d.dataset.testid = "line";
  const t = el("span", "t", fmtTime(r.ts));
  t.title = r.ts;
  const s = el("span", "s", srcLabel(r));
  s.style.setProperty("--c", colour(it.key));
  d.append(t, " ", s, " ");
  if (r.level) d.append(el("span", "b", r.level.toUpperCase()), " ");
  // The expander before the text, so a long line's ellipsis never hides it.
  const n = (it.cont ? it.cont.length : 0), f = v.fields ? v.fields.length : 0;
  if (n || f) {
    const more = el("span", "more", (it.open ? "▾ " : "▸ ") + (n ? "+" + n + " lines" : f + " fields"));
    more.dataset.testid = "expand";
    d.append(more, " ");
    d.classList.add("expandable");
  }
  const x = el("span", "x");
  richText(x, v.text, v.keys);
  d.append(x);
  if (v.fields && v.fields.length && !it.open) {
    const fs = el("span", "fs");
    fs.append("  ");
    v.fields.slice(0, 8).forEach(([k, val], i) => {
      if (i) fs.append(" ");
      fs.append(el("span", "k", k), "=" + (val.length > 80 ? val.slice(0, 80) + "…" : val));
    });
    d.append(fs);
  }
  d.title = r.line.length > MAX_TEXT ? r.line.slice(0, MAX_TEXT) + "…" : r.line;
  return d;
}

function subRow(it, sub) {
  const fields = fieldsOf(it);
  if (sub <= fields.length) {
    const [k, v] = fields[sub - 1];
    const d = el("div", "l field");
    d.dataset.testid = "field";
    d.append(el("span", "k", k), ": ");
    richText(d, v, null);
    return d;
  }
  const c = it.cont[sub - 1 - fields.length];
  const d = el("div", "l cont " + (it.r.level || ""));
  d.dataset.testid = "line";
  richText(d, c.line, null);
  return d;
}

function render() {
  manyPods = podNames().length > 1;
  const total = rowCount();
  spacer.style.height = total * RH + "px";
  if (follow) { logEl.scrollTop = logEl.scrollHeight; ownTop = logEl.scrollTop; }
  const top = logEl.scrollTop, h = logEl.clientHeight;
  const first = Math.max(0, Math.floor(top / RH) - OVERSCAN);
  const last = Math.min(total, Math.ceil((top + h) / RH) + OVERSCAN);
  const frag = document.createDocumentFragment();
  for (let row = first; row < last; row++) {
    const [i, sub] = at(row);
    const it = items[i];
    if (!it) break;
    let d;
    if (it.notice !== undefined) {
      d = el("div", "l notice " + it.cls, it.notice);
      d.dataset.testid = "notice";
    } else d = sub === 0 ? lineRow(it) : subRow(it, sub);
    d.style.top = row * RH + "px";
    d.dataset.i = i;
    d.dataset.sub = sub;
    frag.append(d);
  }
  spacer.replaceChildren(frag);
  stats.rendered = last - first;
  const jump = $("jump");
  jump.hidden = follow;
  jump.textContent = newLines ? newLines + " new lines — jump to latest" : "jump to latest";
}

function frame() {
  requestAnimationFrame(frame);
  const dropped = droppedRows + trim();
  droppedRows = 0;
  if (dropped && !follow) { logEl.scrollTop = Math.max(0, logEl.scrollTop - dropped * RH); ownTop = logEl.scrollTop; }
  if (sourcesDirty) renderSources();
  if (dirty || dropped) { dirty = false; render(); }
  const now = performance.now();
  if (now - lastUrlAt > URL_EVERY_MS) { lastUrlAt = now; syncUrl(); }
}

// Only the user's scrolling changes follow: scrolling up stops it, down to
// the end starts it again. The page's own scrolls (to the end, or keeping
// the view still as old lines are dropped) are told apart by position.
let ownTop = -1;
logEl.addEventListener("scroll", () => {
  dirty = true;
  if (logEl.scrollTop === ownTop) return;
  ownTop = -1;
  const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - RH;
  if (atBottom && !follow) setFollow(true);
  else if (!atBottom && follow) setFollow(false);
  dirty = true;
}, { passive: true });

logEl.addEventListener("click", e => {
  const row = e.target.closest(".l");
  if (!row || !row.classList.contains("expandable")) return;
  // Selecting text is not a click on the row.
  if (!e.target.classList.contains("more") && String(window.getSelection() || "") !== "") return;
  const it = items[Number(row.dataset.i)];
  if (!it || !it.r) return;
  const before = extra(it);
  it.open = !it.open;
  openRows += extra(it) - before;
  starts = null;
  dirty = true;
});

function setFollow(on) {
  follow = on;
  if (on) newLines = 0;
  $("follow").setAttribute("aria-pressed", String(on));
  dirty = true;
}

function setPaused(on) {
  paused = on;
  $("pause").setAttribute("aria-pressed", String(on));
  $("pause").textContent = on ? "resume" : "pause";
  if (!on) flushHeld();
  showHeld();
}

function showHeld() {
  const e = $("held");
  e.hidden = !paused;
  e.textContent = held.length + " held" + (heldDropped ? " (" + heldDropped + " dropped)" : "");
}

function flushHeld() {
  if (heldDropped) { notice("paused past the line cap: the oldest " + heldDropped + " held lines were dropped", "gap"); heldDropped = 0; }
  if (held.length) { append(held); held = []; dirty = true; }
  if (heldCursor) { viewCursor = heldCursor; heldCursor = ""; }
}

// ---------------------------------------------------------------------------
// Colours: a stable hue per source (FNV-1a of its key).

const colours = new Map();
function colour(key) {
  let c = colours.get(key);
  if (!c) {
    let h = 0x811c9dc5;
    for (let i = 0; i < key.length; i++) { h ^= key.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
    c = "hsl(" + (h % 360) + " 65% var(--src-l, 42%))";
    colours.set(key, c);
  }
  return c;
}

// ---------------------------------------------------------------------------
// Sources panel: selection becomes the pod=/container=/file= filters.

let sourcesDirty = true;

function podNames() { return [...new Set([...sources.values()].map(s => s.pod))]; }

function reEscape(s) { return s.replace(/[\\^$.*+?()[\]{}|]/g, "\\$&"); }
function globEscape(s) { return s.replace(/[\\*?[\]{},]/g, "\\$&"); }

// The server's glob (globset: `*` crosses `/`) as a JS RegExp, for marking.
function globRegExp(g) {
  let out = "", depth = 0;
  for (let i = 0; i < g.length; i++) {
    const c = g[i];
    if (c === "\\" && i + 1 < g.length) out += reEscape(g[++i]);
    else if (c === "*") { out += ".*"; while (g[i + 1] === "*") i++; }
    else if (c === "?") out += ".";
    else if (c === "{") { out += "(?:"; depth++; }
    else if (c === "}" && depth) { out += ")"; depth--; }
    else if (c === "," && depth) out += "|";
    else if (c === "[") {
      const end = g.indexOf("]", i + 2);
      if (end < 0) out += "\\[";
      else { out += "[" + g.slice(i + 1, end).replace(/^!/, "^").replace(/\\/g, "\\\\") + "]"; i = end; }
    } else out += reEscape(c);
  }
  try { return new RegExp("^" + out + "$"); } catch (_) { return null; }
}
function anchored(re) {
  try { return new RegExp("^(?:" + re.replace(/\(\?P</g, "(?<") + ")$"); } catch (_) { return null; }
}

// The filters asked for last (a subscribe may still be on its way).
function wanted() { return pending.length ? pending[pending.length - 1] : opt; }

// Sources the filters select (none when no source filter is set).
function selectedKeys() {
  const o = wanted(), out = new Set();
  if (!o.file && !o.pod && !o.container) return out;
  const f = o.file ? globRegExp(o.file) : null, p = o.pod ? anchored(o.pod) : null,
    c = o.container ? anchored(o.container) : null;
  for (const [k, s] of sources) {
    if ((!o.file || (f && f.test(s.file))) && (!o.pod || (p && p.test(s.pod))) &&
        (!o.container || (c && c.test(s.container)))) out.add(k);
  }
  return out;
}

// Filters for a set of sources: each of pod/container/file narrowed only
// when the set leaves some value out.
function filtersFor(keys) {
  const sel = [...keys].map(k => sources.get(k)).filter(Boolean);
  if (!sel.length) return { pod: "", container: "", file: "" };
  const all = [...sources.values()];
  const pick = (list, f) => [...new Set(list.map(f))].sort();
  const pods = pick(sel, s => s.pod), allPods = pick(all, s => s.pod);
  const within = all.filter(s => pods.includes(s.pod));
  const conts = pick(sel, s => s.container), allConts = pick(within, s => s.container);
  const files = pick(sel, s => s.file), allFiles = pick(within, s => s.file);
  const alt = vs => vs.length === 1 ? reEscape(vs[0]) : "(?:" + vs.map(reEscape).join("|") + ")";
  return {
    pod: pods.length < allPods.length ? alt(pods) : "",
    container: conts.length < allConts.length ? alt(conts) : "",
    file: files.length < allFiles.length
      ? (files.length === 1 ? globEscape(files[0]) : "{" + files.map(globEscape).join(",") + "}") : "",
  };
}

function toggleSources(keys) {
  const sel = selectedKeys();
  const on = keys.some(k => !sel.has(k));
  for (const k of keys) { if (on) sel.add(k); else sel.delete(k); }
  // Everything selected is the same as nothing selected.
  const f = sel.size === sources.size ? { pod: "", container: "", file: "" } : filtersFor(sel);
  resubscribe(f);
}

function renderSources() {
  sourcesDirty = false;
  const sel = selectedKeys();
  const byPod = new Map();
  for (const [k, s] of [...sources].sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)) {
    if (!byPod.has(s.pod)) byPod.set(s.pod, []);
    byPod.get(s.pod).push([k, s]);
  }
  const ul = $("src-list"), frag = document.createDocumentFragment();
  const showPods = byPod.size > 1 || role === "aggregator";
  for (const [pod, list] of byPod) {
    const keys = list.map(([k]) => k);
    if (showPods) {
      const li = el("li", "pod" + (keys.every(k => sel.has(k)) ? " sel" : ""));
      li.dataset.testid = "pod";
      li.dataset.pod = pod;
      li.append(el("span", "box", keys.every(k => sel.has(k)) ? "☑" : keys.some(k => sel.has(k)) ? "◩" : "☐"),
        el("span", "name", pod || "(local)"), el("span", "n", String(list.reduce((a, [, s]) => a + s.lines, 0))));
      if (list.every(([, s]) => s.gone)) li.classList.add("gone");
      li.setAttribute("role", "checkbox");
      li.setAttribute("aria-checked", keys.every(k => sel.has(k)) ? "true" : keys.some(k => sel.has(k)) ? "mixed" : "false");
      li.onclick = () => toggleSources(keys);
      frag.append(li);
    }
    for (const [k, s] of list) {
      const li = el("li", (showPods ? "file" : "") + (sel.has(k) ? " sel" : "") + (s.gone ? " gone" : s.history === 0 ? " idle" : ""));
      li.dataset.testid = "source";
      li.dataset.pod = s.pod;
      li.dataset.container = s.container;
      li.dataset.file = s.file;
      const sw = el("span", "sw");
      sw.style.setProperty("--c", colour(k));
      const n = el("span", "n", String(s.lines));
      n.dataset.testid = "count";
      li.append(el("span", "box", sel.has(k) ? "☑" : "☐"), sw,
        el("span", "name", [s.container, s.file].filter(Boolean).join("/")), n);
      li.title = [s.ns, s.pod, s.container, s.file].filter(Boolean).join(" / ") +
        (s.last_ts ? "\nlast line " + s.last_ts : "") + (s.gone ? "\nno longer in this server's history" : "");
      li.setAttribute("role", "checkbox");
      li.setAttribute("aria-checked", String(sel.has(k)));
      li.onclick = () => toggleSources([k]);
      frag.append(li);
    }
  }
  ul.replaceChildren(frag);
  $("src-count").textContent = String(sources.size);
  const o = wanted();
  $("src-clear").hidden = !(o.file || o.pod || o.container);
  const custom = [["pod", o.pod], ["container", o.container], ["file", o.file]].filter(([, v]) => v);
  $("src-filter").hidden = !custom.length;
  $("src-filter").textContent = custom.map(([k, v]) => k + "=" + v).join(" ");
}

async function pollSources() {
  try {
    const q = token ? "?access_token=" + encodeURIComponent(token) : "";
    const resp = await fetch(new URL("sources" + q, location.href), { cache: "no-store" });
    if (resp.ok) {
      const list = (await resp.json()).sources || [];
      const seen = new Set();
      for (const s of list) {
        const k = srcKey(s);
        seen.add(k);
        sources.set(k, { ns: s.ns || "", pod: s.pod, container: s.container || "", file: s.file,
          lines: s.lines, history: s.history, last_ts: s.last_ts || "", gone: false });
      }
      // Gone from the server: struck through once, then removed.
      for (const [k, s] of sources) {
        if (seen.has(k)) continue;
        if (s.gone) sources.delete(k); else s.gone = true;
      }
      sourcesDirty = true;
    }
  } catch (_) { /* the server is away; the stream says so */ }
  setTimeout(pollSources, SOURCES_EVERY_MS);
}

// ---------------------------------------------------------------------------
// The stream

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  u.search = streamQuery(true).toString();
  return u.toString();
}

function streamQuery(withPosition) {
  const q = new URLSearchParams();
  for (const k of ["file", "pod", "container", "level"]) if (opt[k]) q.set(k, opt[k]);
  if (opt.grep) q.set("grep", grepWire(opt.grep, opt.icase));
  if (token) q.set("access_token", token);
  if (withPosition) { if (cursor) q.set("resume", cursor); else q.set("tail", String(opt.tail)); }
  return q;
}

function grepWire(g, icase) { return icase ? "(?i)" + g : g; }

// A quantified group holding a quantifier ("(a+)+") can backtrack for ages
// in the browser's engine (the server's is linear): not highlighted.
const NESTED = /\([^)]*[+*}][^)]*\)\s*[+*{]/;

function setHighlight() {
  hl = null;
  if (!opt.grep || NESTED.test(opt.grep)) return;
  try { hl = new RegExp(opt.grep.replace(/\(\?P</g, "(?<"), opt.icase ? "gi" : "g"); } catch (_) { /* Rust-only syntax: no highlight */ }
}

function setStatus(text, live) {
  statusEl.textContent = text;
  statusEl.classList.toggle("live", !!live);
}

function connect() {
  const sock = new WebSocket(wsUrl());
  ws = sock;
  let opened = false;
  sock.onopen = () => { opened = true; everOpen = true; retry = 500; setStatus("live", true); };
  sock.onmessage = ev => {
    const m = JSON.parse(ev.data);
    if (pending.length && (m.type === "records" || m.type === "gap")) { buffered.push(m); return; }
    handle(m);
  };
  sock.onclose = ev => {
    if (ws !== sock) return;
    ws = null;
    if (pending.length) {
      // Unanswered: the next connection opens with the newest filters.
      apply(pending[pending.length - 1]);
      pending = []; buffered = [];
    }
    if (!opened) { explainRefusal(); return; }
    setStatus("reconnecting…");
    if (!reconnecting) { reconnecting = true; settleNotice = notice("reconnecting… (" + (ev.reason || "closed " + ev.code) + ")"); }
    schedule();
  };
}

function schedule() {
  clearTimeout(retryTimer);
  if (moveAfter !== null) { retryTimer = setTimeout(connect, moveAfter); moveAfter = null; return; }
  retryTimer = setTimeout(connect, retry + Math.random() * retry);
  retry = Math.min(retry * 2, 10000);
}

// A refused handshake's reason is invisible to WebSocket: ask /stream.
async function explainRefusal() {
  const ctl = new AbortController();
  try {
    const q = streamQuery(false);
    q.set("tail", "0");
    const resp = await fetch(new URL("stream?" + q, location.href), { signal: ctl.signal, cache: "no-store" });
    if (resp.status !== 400) ctl.abort();
    if (resp.status === 400) {
      const why = (await resp.text()).trim();
      setStatus("refused");
      showFindError(why);
      notice("the server refused the filters: " + why, "error");
      return; // the user fixes a filter; that reconnects
    }
    if (resp.status === 401 || resp.status === 403) {
      setStatus("refused (" + resp.status + ")");
      notice("the server refused this page (" + resp.status + "): open it with ?access_token=…", "error");
      return;
    }
  } catch (_) { /* unreachable: retry below */ }
  setStatus("reconnecting…");
  schedule();
}

function handle(m) {
  switch (m.type) {
    case "hello":
      role = m.role || "";
      $("role").textContent = role ? " " + role : "";
      sourcesDirty = true;
      if (reconnecting) {
        reconnecting = false;
        if (settleNotice) settleNotice.notice = "reconnected; resuming…";
        dirty = true;
      }
      break;
    case "records":
      stats.batches++;
      cursor = m.cursor;
      if (settleNotice) { settleNotice.notice = "resumed, nothing lost"; settleNotice.cls = "ok"; settleNotice = null; }
      if (paused) {
        held.push(...m.records);
        if (held.length > opt.cap) { heldDropped += held.length - opt.cap; held.splice(0, held.length - opt.cap); }
        heldCursor = m.cursor;
        showHeld();
      } else {
        append(m.records);
        viewCursor = m.cursor;
        dirty = true;
      }
      break;
    case "gap":
      if (settleNotice) { settleNotice.notice = "resumed"; settleNotice = null; }
      stats.missed += m.missed;
      notice("gap: " + m.missed + " lines skipped (" + m.reason.replace("_", " ") + ")", "gap");
      break;
    case "subscribed":
      // Ends a pending subscribe: the view restarts with the new filters
      // (what arrived before belonged to the old ones).
      if (pending.length) { apply(pending.shift()); buffered = []; }
      cursor = m.cursor;
      break;
    case "draining":
      if (m.cursor && m.cursor.length) cursor = m.cursor;
      if (ws) ws.send(JSON.stringify({ type: "ack", cursor: m.cursor }));
      break;
    case "reconnect":
      // The server moves us (a draining aggregator): come back after its delay.
      setStatus("moving…");
      moveAfter = Math.max(0, Number(m.after_ms) || 0);
      break;
    case "error":
      if (pending.length) {
        // The new filters were refused; the old ones still stream.
        pending.shift();
        showFindError(m.message);
        if (!pending.length) { const b = buffered; buffered = []; replay(b); }
      } else notice("error: " + m.message, "error");
      break;
  }
}

function replay(msgs) { for (const m of msgs) handle(m); }

function showFindError(text) {
  const e = $("find-error");
  e.hidden = !text;
  e.textContent = text || "";
  $("grep").classList.toggle("bad", !!text);
}

// New filters: over the open socket (an invalid one is answered in place
// and the old filters keep streaming), else on the next connection.
function resubscribe(change) {
  const next = Object.assign({}, wanted(), change);
  const sub = { type: "subscribe", tail: opt.tail };
  for (const k of ["file", "pod", "container", "level"]) if (next[k]) sub[k] = next[k];
  if (next.grep) sub.grep = grepWire(next.grep, next.icase);
  sourcesDirty = true;
  if (ws && ws.readyState === WebSocket.OPEN) {
    pending.push(next); // applied when its "subscribed" arrives
    ws.send(JSON.stringify(sub));
  } else {
    pending = []; buffered = [];
    apply(next);
    if (ws) { const old = ws; ws = null; old.close(); }
    clearTimeout(retryTimer);
    connect();
  }
}

function apply(next) {
  Object.assign(opt, next);
  cursor = ""; viewCursor = ""; held = []; heldCursor = ""; heldDropped = 0;
  settleNotice = null;
  clearView();
  setFollow(true);
  setHighlight();
  showFindError("");
  showHeld();
  sourcesDirty = true;
  syncUrl();
}

function syncUrl() {
  const q = new URLSearchParams();
  for (const k of ["file", "pod", "container", "level", "grep"]) if (opt[k]) q.set(k, opt[k]);
  if (opt.icase) q.set("icase", "1");
  if (opt.utc) q.set("tz", "utc");
  if (opt.cap !== 20000) q.set("cap", String(opt.cap));
  if (params.get("tail")) q.set("tail", String(opt.tail));
  if (token) q.set("access_token", token);
  if (viewCursor) q.set("resume", viewCursor);
  const s = q.toString();
  if (s !== location.search.replace(/^\?/, "")) history.replaceState(null, "", s ? "?" + s : location.pathname);
}

// ---------------------------------------------------------------------------
// Downloads

function download(kind) {
  const out = [];
  const emit = r => out.push(kind === "jsonl" ? JSON.stringify(r)
    : [r.ts, [r.pod, r.container, r.file].filter(Boolean).join("/"), r.level || "-", r.line].join(" "));
  for (const it of items) {
    if (!it.r) continue;
    emit(it.r);
    if (it.cont) it.cont.forEach(emit);
  }
  const blob = new Blob([out.join("\n") + (out.length ? "\n" : "")],
    { type: kind === "jsonl" ? "application/x-ndjson" : "text/plain" });
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = "logstream-" + new Date().toISOString().replace(/[:.]/g, "-") + (kind === "jsonl" ? ".jsonl" : ".log");
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---------------------------------------------------------------------------
// Controls

const grepEl = $("grep"), caseEl = $("case"), levelEl = $("level"), capEl = $("cap");
grepEl.value = opt.grep;
caseEl.checked = !opt.icase;
levelEl.value = opt.level;
if (levelEl.value !== opt.level) { // a level list from the URL: keep it selectable
  levelEl.append(new Option(opt.level, opt.level));
  levelEl.value = opt.level;
}
capEl.value = String(opt.cap);
$("tz").textContent = opt.utc ? "UTC" : "local";

grepEl.addEventListener("change", () => resubscribe({ grep: grepEl.value.trim() }));
caseEl.addEventListener("change", () => resubscribe({ icase: !caseEl.checked, grep: grepEl.value.trim() }));
levelEl.addEventListener("change", () => resubscribe({ level: levelEl.value }));
capEl.addEventListener("change", () => { opt.cap = clamp(Number(capEl.value) || 20000, 100, 200000); capEl.value = String(opt.cap); dirty = true; syncUrl(); });
$("follow").addEventListener("click", () => setFollow(!follow));
$("pause").addEventListener("click", () => setPaused(!paused));
$("jump").addEventListener("click", () => setFollow(true));
$("tz").addEventListener("click", () => { opt.utc = !opt.utc; $("tz").textContent = opt.utc ? "UTC" : "local"; dirty = true; syncUrl(); });
$("dl-text").addEventListener("click", () => download("text"));
$("dl-json").addEventListener("click", () => download("jsonl"));
$("src-clear").addEventListener("click", () => resubscribe({ pod: "", container: "", file: "" }));
document.addEventListener("keydown", e => {
  const t = e.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) {
    if (e.key === "Escape") t.blur();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "/") { e.preventDefault(); grepEl.focus(); grepEl.select(); }
  else if (e.key === "f") setFollow(!follow);
  else if (e.key === " ") { e.preventDefault(); setPaused(!paused); }
});

setHighlight();
setFollow(true);
setPaused(false);
if (cursor) { reconnecting = false; settleNotice = notice("resuming after the link's cursor…"); }
connect();
pollSources();
requestAnimationFrame(frame);
