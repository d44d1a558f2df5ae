// The dashboard page: one snapshot (/api/state), then every change over /api/stream.
// Panels: block tree (tree.js), network, payments, attack, activity log with playback,
// controls. Everything the page knows comes from the dashboard server; it never talks to a
// node and never sees an RPC credential.
import { layoutTree, renderTree, nodeColour } from "./tree.js";

const MAX_LOG = 5000; // entries kept here, as on the server
// The server's bounds (snapshot.limits), applied to what the page keeps from the stream.
const LIMITS = { blocks: 20000, evict_to: 18000, runs: 10, run_events: 2000 };
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
// What the server sends is typed there; the page still draws a wrong type as nothing
// rather than throwing (one bad field must not blank a panel).
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const list = (v) => (Array.isArray(v) ? v : []);
const clock = (t) => new Date(t * 1000).toTimeString().slice(0, 8);

const S = {
  blocks: new Map(), nodes: [], partition: null, faults: {}, log: [], baseTips: {}, tips: {},
  runs: new Map(), marks: {}, finality: 6, controls: false, loaded: false,
  playback: null, // null: live; else an index into S.log
  treeDirty: true, // the tree is redrawn only when blocks, tips, marks or the moment change
  tracked: [], payments: new Map(), fresh: new Set(),
  filters: new Set(["tip", "reorg", "reorg_refused", "partition", "heal", "attack", "double_spend", "control", "node"]),
};
// Measurements read by the tests: when each block was first drawn, and the last render time.
window.powlabDrawn = {};
window.powlabStats = { renders: 0, lastRenderMs: 0 };

// ---------------------------------------------------------------- data in
function applySnapshot(snap) {
  S.blocks = new Map(snap.blocks.map((b) => [b.hash, b]));
  S.nodes = snap.nodes; S.partition = snap.partition; S.log = snap.log;
  S.faults = snap.link_faults || {};
  S.baseTips = snap.base_tips; S.marks = snap.marks; S.finality = snap.finality_depth;
  S.controls = snap.controls;
  S.runs = new Map(snap.runs.map((r) => [r.id, r]));
  Object.assign(LIMITS, snap.limits || {});
  S.playback = null;
  S.tips = { ...S.baseTips };
  for (const n of S.nodes) if (n.tip) S.tips[n.name] = n.tip;
  for (const e of S.log) if (e.kind === "tip") S.tips[e.node] = e.hash;
  S.loaded = true;
  S.treeDirty = true;
}

// As the server does: past LIMITS.blocks, the lowest heights go, down to LIMITS.evict_to.
function evictBlocks() {
  const keep = [...S.blocks.values()].sort((a, b) => a.height - b.height).slice(-LIMITS.evict_to);
  S.blocks = new Map(keep.map((b) => [b.hash, b]));
  for (const h of S.fresh) if (!S.blocks.has(h)) S.fresh.delete(h);
}

function apply(msg) {
  switch (msg.kind) {
    case "block": {
      const b = msg.block;
      if (!S.blocks.has(b.hash)) S.fresh.add(b.hash);
      S.blocks.set(b.hash, b);
      if (S.blocks.size > LIMITS.blocks) evictBlocks();
      S.treeDirty = true;
      schedulePayments();
      break;
    }
    case "tip": S.treeDirty = true; S.tips[msg.node] = msg.hash; if (!S.log.length) S.baseTips[msg.node] = msg.hash; break;
    case "log": {
      const e = msg.entry;
      if (S.log.length && e.seq <= S.log[S.log.length - 1].seq) return;
      S.log.push(e);
      if (e.kind === "tip") { S.tips[e.node] = e.hash; S.treeDirty = true; }
      while (S.log.length > MAX_LOG) {
        const old = S.log.shift();
        if (old.kind === "tip") S.baseTips[old.node] = old.hash;
        if (S.playback !== null) S.playback = Math.max(0, S.playback - 1);
      }
      break;
    }
    case "nodes": S.nodes = msg.nodes; S.partition = msg.partition; S.faults = msg.link_faults || {}; break;
    case "run": {
      let run = S.runs.get(msg.id);
      if (!run) {
        run = { id: msg.id, start: null, events: [], end: null };
        S.runs.set(msg.id, run);
        while (S.runs.size > LIMITS.runs) S.runs.delete(S.runs.keys().next().value);
      }
      const r = msg.record;
      if (r.type === "start") run.start = r;
      else if (r.type === "end") run.end = r;
      else if (r.type === "event" && run.events.length < LIMITS.run_events) run.events.push(r);
      if (msg.marks) { S.marks = msg.marks; S.treeDirty = true; }
      break;
    }
    case "tx": if (S.tracked.includes(msg.txid)) schedulePayments(); break;
    default: break;
  }
  scheduleRender();
}

let stream = null;
function connect() {
  const pending = [];
  const es = new EventSource("/api/stream");
  stream = es;
  es.onopen = async () => {
    $("conn").textContent = "live"; $("conn").className = "conn ok";
    const resp = await fetch("/api/state");
    if (!resp.ok) { $("conn").textContent = `error ${resp.status}`; $("conn").className = "conn bad"; return; }
    applySnapshot(await resp.json());
    for (const m of pending.splice(0)) apply(m);
    renderAll();
  };
  es.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (!S.loaded) pending.push(msg); else apply(msg);
  };
  es.onerror = () => {
    $("conn").textContent = "reconnecting…"; $("conn").className = "conn bad";
    S.loaded = false;
  };
}

// ---------------------------------------------------------------- rendering
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderAll(); });
}

function viewAt() {
  // The tips and blocks to draw: now, or at the playback position.
  if (S.playback === null) return { tips: S.tips, blocks: S.blocks, t: null };
  const tips = { ...S.baseTips };
  for (let k = 0; k <= S.playback && k < S.log.length; k++) {
    const e = S.log[k];
    if (e.kind === "tip") tips[e.node] = e.hash;
  }
  const t = S.log[S.playback] ? S.log[S.playback].t : 0;
  const blocks = new Map();
  for (const [h, b] of S.blocks) if (b.seen <= t + 0.001) blocks.set(h, b);
  return { tips, blocks, t };
}

function renderAll() {
  if (!S.loaded) return;
  if (S.treeDirty) {
    S.treeDirty = false;
    const t0 = performance.now();
    renderTreePanel();
    window.powlabStats.lastRenderMs = performance.now() - t0;
    window.powlabStats.renders++;
  }
  renderSummary(); renderNetwork(); renderAttack(); renderLog(); renderPlayback();
  renderControls();
}

function renderTreePanel() {
  const view = viewAt();
  const names = S.nodes.map((n) => n.name);
  const lay = layoutTree(view.blocks, view.tips, S.marks, S.finality);
  const tree = $("tree");
  const keepScroll = tree.scrollTop;
  tree.innerHTML = renderTree(lay, S.marks, names, S.fresh);
  tree.scrollTop = keepScroll;
  const now = Date.now();
  for (const h of S.fresh) if (!(h in window.powlabDrawn) && view.blocks.has(h)) window.powlabDrawn[h] = now;
  S.fresh.clear();
}

function renderSummary() {
  const heights = S.nodes.map((n) => n.height).filter((h) => h !== null);
  const tips = new Set(Object.values(S.tips));
  const up = S.nodes.filter((n) => n.up).length;
  $("summary").textContent = `${S.nodes.length} nodes (${up} up) · height ${heights.length ? Math.max(...heights) : "?"}` +
    ` · ${tips.size} tip${tips.size === 1 ? "" : "s"} · finality depth ${S.finality}` +
    (S.partition ? ` · PARTITIONED ${S.partition.map((g) => g.join(",")).join(" | ")}` : "");
}

function activeRoles() {
  // Roles of a run in progress (attacker, victim, …) shown on the nodes.
  const roles = {};
  for (const run of S.runs.values()) {
    if (run.end || !run.start || !run.start.roles) continue;
    for (const [role, who] of Object.entries(run.start.roles)) {
      for (const n of [].concat(who)) if (typeof n === "string") roles[n] = role;
    }
  }
  return roles;
}

const ROLE_FILL = { miner: "#fdb022", attacker: "#f04438", victim: "#53b1fd", merchant: "#53b1fd",
  honest: "#fdb022", node: "#d0d5dd", observer: "#d0d5dd" };

function renderNetwork() {
  const names = S.nodes.map((n) => n.name);
  const roles = activeRoles();
  const many = names.length > 8;
  const W = 520, H = many ? 440 : 300;
  const R = many ? 15 : 24; // node circle radius
  const pos = {};
  const groups = S.partition ? S.partition.map((g) => g.filter((n) => names.includes(n))) : [names];
  const rest = names.filter((n) => !groups.flat().includes(n));
  if (rest.length) groups.push(rest);
  groups.forEach((g, gi) => {
    const cx = (W / groups.length) * (gi + 0.5), cy = H / 2;
    const r = Math.min(W / groups.length / 2 - 2 * R - 10, H / 2 - 2 * R - 10);
    g.forEach((n, k) => {
      const a = -Math.PI / 2 + (2 * Math.PI * k) / Math.max(1, g.length);
      pos[n] = g.length === 1 ? [cx, cy] : [cx + r * Math.cos(a), cy + r * Math.sin(a)];
    });
  });
  const parts = [];
  if (groups.length > 1 && S.partition) {
    for (let gi = 1; gi < groups.length; gi++) {
      const x = (W / groups.length) * gi;
      parts.push(`<line x1="${x}" y1="10" x2="${x}" y2="${H - 10}" stroke="#d92d20" stroke-width="3" stroke-dasharray="9 6"/>` +
        `<text x="${x + 6}" y="24" fill="#d92d20" font-size="14" font-weight="bold">partition</text>`);
    }
  }
  const seen = new Set();
  const link = (key, a, b) => {
    const [x1, y1] = pos[a], [x2, y2] = pos[b];
    const fault = S.faults[key];
    if (!fault) {
      parts.push(`<line class="link" data-link="${esc(key)}" x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="#12b76a" stroke-width="3"/>`);
      return;
    }
    // An injected link fault (a scenario's setlinkfault): dashed amber, with its settings.
    const len = Math.hypot(x2 - x1, y2 - y1) || 1;
    const mx = (x1 + x2) / 2 - ((y2 - y1) / len) * 16, my = (y1 + y2) / 2 + ((x2 - x1) / len) * 16 + 4;
    const text = [fault.delay_ms ? `${fault.delay_ms}${fault.jitter_ms ? "±" + fault.jitter_ms : ""} ms` : "",
      fault.loss ? `${Math.round(fault.loss * 100)}% loss` : "", fault.bandwidth_kbps ? `${fault.bandwidth_kbps} kbit/s` : ""].filter(Boolean).join(", ");
    parts.push(`<g class="link fault" data-link="${esc(key)}"><line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="#f79009" stroke-width="4" stroke-dasharray="8 5"/>` +
      `<text x="${mx}" y="${my}" text-anchor="middle" font-size="13" font-weight="bold" fill="#b54708" paint-order="stroke" stroke="#fff" stroke-width="5">⚡ ${esc(text)}</text></g>`);
  };
  for (const n of S.nodes) {
    for (const p of n.peers || []) {
      const key = [n.name, p].sort().join("|");
      if (seen.has(key) || !pos[p] || !pos[n.name]) continue;
      seen.add(key);
      link(key, n.name, p);
    }
  }
  for (const key of Object.keys(S.faults)) {
    const [a, b] = key.split("|");
    if (!seen.has(key) && pos[a] && pos[b]) link(key, a, b);
  }
  for (const n of S.nodes) {
    const [x, y] = pos[n.name];
    const role = roles[n.name] || n.role;
    const fill = n.up ? (ROLE_FILL[role] || "#d0d5dd") : "#fecdca";
    parts.push(`<g class="gnode" data-node="${esc(n.name)}"><circle cx="${x}" cy="${y}" r="${R}" fill="${fill}" stroke="${nodeColour(n.name, names)}" stroke-width="${many ? 3 : 4}"/>` +
      `<text x="${x}" y="${y + (many ? 4 : 5)}" text-anchor="middle" font-size="${many ? 11 : 15}" font-weight="bold">${esc(n.name)}</text>` +
      (many ? "" : `<text x="${x}" y="${y + 42}" text-anchor="middle" font-size="12" fill="#344054">${esc(role)}${n.share ? ` ${Math.round(n.share * 100)}%` : ""} · h ${esc(n.height ?? "?")}</text>`) + "</g>");
  }
  $("graph").innerHTML = `<svg width="100%" viewBox="0 0 ${W} ${H}" height="${H}">${parts.join("")}</svg>`;
  const rows = S.nodes.map((n) => {
    const role = roles[n.name] || n.role;
    return `<tr data-node="${esc(n.name)}"><td><b style="color:${nodeColour(n.name, names)}">${esc(n.name)}</b></td><td>${esc(role)}</td>` +
      `<td>${n.share ? Math.round(num(n.share) * 100) + "%" : "–"}</td><td>${n.up ? esc(n.height ?? "?") : '<span class="down">down</span>'}</td>` +
      `<td class="mono">${esc(String(n.tip ?? "").slice(0, 10))}</td><td>${esc(n.peer_count)}</td><td>${esc(n.mempool)}</td>` +
      `<td>${n.mining ? num(n.hashrate).toFixed(2) : "off"}</td></tr>` +
      (n.warnings ? `<tr><td colspan="8" class="down">${esc(n.warnings)}</td></tr>` : "");
  });
  $("nodes").innerHTML = `<tr><th>node</th><th>role</th><th>share</th><th>height</th><th>tip</th><th>peers</th><th>mempool</th><th>H/s</th></tr>${rows.join("")}`;
}

// ---------------------------------------------------------------- payments
let paymentsTimer = null;
function schedulePayments() {
  if (!S.tracked.length || paymentsTimer) return;
  paymentsTimer = setTimeout(() => { paymentsTimer = null; refreshPayments(); }, 250);
}

async function refreshPayments() {
  for (const txid of S.tracked) {
    const resp = await fetch(`/api/tx?txid=${txid}`);
    if (resp.ok) S.payments.set(txid, await resp.json());
  }
  renderPayments();
}

function track(txid) {
  txid = txid.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(txid)) { alert("a txid is 64 hex digits"); return; }
  if (!S.tracked.includes(txid)) S.tracked.unshift(txid);
  S.tracked = S.tracked.slice(0, 10);
  showTab("payments");
  refreshPayments();
}
window.powlabTrack = track;

function riskCurve(p) {
  const W = 300, H = 110, L = 34, B = 20;
  const n = p.curve.length - 1;
  const X = (z) => L + ((W - L - 8) * z) / Math.max(1, n);
  const Y = (r) => 8 + (H - B - 8) * (1 - r);
  const pts = p.curve.map((c) => `${X(c.z)},${Y(c.risk)}`).join(" ");
  const dots = p.nodes.filter((r) => typeof r.confirmations === "number" && r.confirmations >= 0)
    .map((r) => { const z = Math.min(n, r.confirmations); return `<circle cx="${X(z)}" cy="${Y(typeof r.reversal_risk === "number" ? r.reversal_risk : 1)}" r="5" fill="#d92d20"><title>${esc(r.node)}</title></circle>`; });
  return `<svg class="risk" width="${W}" height="${H}"><polyline points="${pts}" fill="none" stroke="#2563eb" stroke-width="2.5"/>` +
    `<line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}" stroke="#98a2b3"/><line x1="${L}" y1="4" x2="${L}" y2="${H - B}" stroke="#98a2b3"/>` +
    `<text x="2" y="14" font-size="11">100%</text><text x="10" y="${H - B}" font-size="11">0</text>` +
    `<text x="${W - 130}" y="${H - 4}" font-size="11">confirmations (0…${n})</text>${dots.join("")}` +
    `<text x="${L + 6}" y="18" font-size="11" fill="#475467">reversal risk at q = ${Math.round(p.q * 100)}%</text></svg>`;
}

function renderPayments() {
  const out = [];
  for (const txid of S.tracked) {
    const p = S.payments.get(txid);
    if (!p) { out.push(`<div class="payment"><h3>${txid.slice(0, 16)}…</h3>loading…</div>`); continue; }
    const alerts = p.nodes.filter((r) => r.double_spend_alert || list(r.seen_double_spends).length || r.status === "conflicted");
    const best = p.nodes.reduce((a, r) => Math.max(a, r.confirmations ?? 0), 0);
    const allFinal = p.nodes.every((r) => r.status === "final" || r.status === "unknown");
    out.push(`<div class="payment" data-txid="${txid}"><h3>${txid.slice(0, 24)}… <span class="pstatus">${p.nodes.some((r) => r.status === "conflicted") ? "conflicted" : allFinal && best >= p.finality_depth ? "final" : ""}</span></h3>`);
    for (const a of alerts) out.push(`<div class="alert">⚠ ${esc(a.node)}: ${a.status === "conflicted" ? "CONFLICTED (double spent, reorganised out)" : "double spend seen: " + esc(list(a.seen_double_spends).map((t) => String(t).slice(0, 12)).join(", "))}</div>`);
    for (const r of p.nodes) {
      const conf = r.confirmations ?? 0;
      const pct = r.status === "final" ? 100 : Math.max(0, Math.min(100, (100 * conf) / p.finality_depth));
      const label = r.status === "confirmed" ? `${conf}/${p.finality_depth} conf.` : r.status;
      out.push(`<div class="pay-row st-${esc(r.status)}" data-node="${esc(r.node)}" data-status="${esc(r.status)}"><b>${esc(r.node)}</b>` +
        `<div class="bar"><div style="width:${pct}%"></div></div><span class="st">${esc(label)}${r.status === "final" || r.status === "confirmed" ? ` · risk ${fmtRisk(r.reversal_risk)}` : ""}</span></div>`);
    }
    out.push(riskCurve(p), "</div>");
  }
  $("payments").innerHTML = out.join("") || '<p class="muted">Enter a txid, or click one in a block\'s details. Its status on every node climbs to the finality depth here.</p>';
}
const fmtRisk = (r) => (typeof r !== "number" || !Number.isFinite(r) ? "?" : r >= 0.1 ? `${Math.round(r * 100)}%` : `${(r * 100).toPrecision(2)}%`);

// ---------------------------------------------------------------- attack
function renderAttack() {
  const runs = [...S.runs.values()];
  if (!runs.length) return;
  const run = runs[runs.length - 1];
  const start = run.start || {};
  const t0 = start.started || 0;
  const items = run.events.map((e) => `<li><span class="when">${Number(e.t ?? 0).toFixed(1)}s</span><span class="who">${esc(e.node)}</span><span>${esc(e.event)}${e.hash ? ` <code>${esc(e.hash)}</code>` : ""}${e.tip ? ` <code>${esc(e.tip)}</code>` : ""}</span></li>`);
  let verdict = `<div class="verdict running">running… ${run.events.length} events</div>`;
  if (run.end) {
    const cls = run.end.error ? "running" : run.end.success ? "success" : "failed";
    verdict = `<div class="verdict ${cls}" id="verdict">${run.end.error ? "error: " + esc(run.end.error) : esc(run.end.verdict)}</div>`;
  }
  const roles = start.roles ? Object.entries(start.roles).map(([k, v]) => `${esc(k)}: ${esc([].concat(v).join(","))}`).join(" · ") : "";
  $("attack").innerHTML = `<h2 id="attack-name">${esc(start.scenario || run.id)}</h2><p class="muted"><code>${esc(start.command || "")}</code>` +
    `${t0 ? " started " + clock(t0) : ""}<br>${roles}</p>${verdict}<ol class="timeline" id="timeline">${items.join("")}</ol>` +
    (runs.length > 1 ? `<p class="muted">${runs.length - 1} earlier run(s) in DIR/runs/</p>` : "");
}

// ---------------------------------------------------------------- log and playback
const KINDS = [["tip", "tips"], ["reorg", "reorgs"], ["partition", "partitions"], ["attack", "attack steps"],
  ["double_spend", "double spends"], ["reorg_refused", "refused reorgs"], ["control", "controls"], ["peer", "peers"], ["node", "nodes"]];

function renderLog() {
  if (!$("log-filters").children.length) {
    $("log-filters").innerHTML = KINDS.map(([k, label]) => `<label><input type="checkbox" data-kind="${k}" ${S.filters.has(k) ? "checked" : ""}> ${label}</label>`).join("");
    $("log-filters").addEventListener("change", (ev) => {
      const k = ev.target.dataset.kind;
      if (ev.target.checked) { S.filters.add(k); if (k === "partition") S.filters.add("heal"); } else { S.filters.delete(k); if (k === "partition") S.filters.delete("heal"); }
      renderLog();
    });
  }
  if (!$("tab-log").classList.contains("on") && S.playback === null) return; // drawn when shown
  // At most LOG_SHOWN entries: the newest, or those around the playback moment.
  const LOG_SHOWN = 400;
  const end = S.playback === null ? S.log.length : Math.min(S.log.length, S.playback + LOG_SHOWN / 2);
  const start = Math.max(0, end - LOG_SHOWN);
  const items = [];
  for (let k = end - 1; k >= start; k--) {
    const e = S.log[k];
    if (!S.filters.has(e.kind)) continue;
    const cls = [`k-${e.kind}`];
    if (S.playback === k) cls.push("sel");
    if (S.playback !== null && k > S.playback) cls.push("future");
    items.push(`<li class="${cls.join(" ")}" data-index="${k}" data-kind="${esc(e.kind)}"><span class="when">${clock(e.t)}</span><span>${esc(e.text)}</span></li>`);
  }
  $("log").innerHTML = items.join("");
  if (S.playback !== null) document.querySelector("#log li.sel")?.scrollIntoView({ block: "center" });
}

function renderPlayback() {
  const slider = $("pb-slider");
  slider.max = Math.max(0, S.log.length - 1);
  slider.value = S.playback === null ? slider.max : S.playback;
  $("pb-live").classList.toggle("on", S.playback === null);
  document.body.dataset.playback = S.playback === null ? "live" : String(S.playback);
  const e = S.playback === null ? null : S.log[S.playback];
  $("pb-label").textContent = e ? `playback ${S.playback + 1}/${S.log.length} · ${clock(e.t)} · ${e.text}` : "";
}

function seek(index) {
  if (!S.log.length) return;
  S.playback = index === null ? null : Math.max(0, Math.min(S.log.length - 1, index));
  if (S.playback !== null && S.playback === S.log.length - 1 && index > S.log.length - 1) S.playback = null;
  S.treeDirty = true;
  renderAll();
}
window.powlabSeek = seek;
window.powlabLog = () => S.log;
window.powlabCounts = () => ({ blocks: S.blocks.size, runs: S.runs.size,
  events: Math.max(0, ...[...S.runs.values()].map((r) => r.events.length)),
  ended: [...S.runs.values()].filter((r) => r.end).map((r) => r.id) });

// ---------------------------------------------------------------- controls
function renderControls() {
  const box = $("controls");
  if (box.dataset.ready) return;
  box.dataset.ready = "1";
  if (!S.controls) { box.innerHTML = '<p class="muted">Controls are off (the dashboard runs with --no-controls).</p>'; return; }
  const names = S.nodes.map((n) => n.name);
  const opts = names.map((n) => `<option>${esc(n)}</option>`).join("");
  const half = Math.ceil(names.length / 2);
  box.className = "controls";
  box.innerHTML = `<p class="muted">Each control asks for confirmation, then runs the same thing as the <code>powlab testnet</code> command named.</p>
  <fieldset><legend>Mine (<code>testnet mine</code>)</legend><select id="c-mine-node">${opts}</select> <input id="c-mine-n" type="number" min="1" max="10" value="1" style="width:60px"> block(s) <button id="c-mine">Mine</button></fieldset>
  <fieldset><legend>Partition (<code>testnet partition</code>)</legend><input id="c-g1" value="${esc(names.slice(0, half).join(","))}" size="12"> | <input id="c-g2" value="${esc(names.slice(half).join(","))}" size="12"> <button id="c-part">Partition</button> <button id="c-heal">Heal</button></fieldset>
  <fieldset><legend>Send (<code>testnet send</code>)</legend><select id="c-from">${opts}</select> → <select id="c-to">${opts}</select> <input id="c-amount" type="number" min="1" value="100000" style="width:100px"> <button id="c-send">Send</button></fieldset>
  <div id="c-out" class="out"></div>`;
  $("c-to").value = names[names.length - 1] || "";
  const post = async (body, question) => {
    if (!confirm(question)) return;
    $("c-out").textContent = "running…";
    const resp = await fetch("/api/control", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await resp.json();
    $("c-out").textContent = data.error ? `error: ${data.error}` : data.result;
    const m = /txid ([0-9a-f]{64})/.exec(data.result || "");
    if (m) track(m[1]);
  };
  $("c-mine").onclick = () => post({ action: "mine", node: $("c-mine-node").value, blocks: Number($("c-mine-n").value) }, `Mine ${$("c-mine-n").value} block(s) on ${$("c-mine-node").value}?`);
  $("c-part").onclick = () => {
    const groups = [$("c-g1").value, $("c-g2").value].map((g) => g.split(",").map((s) => s.trim()).filter(Boolean));
    post({ action: "partition", groups }, `Partition the network into ${groups.map((g) => g.join(",")).join(" | ")}?`);
  };
  $("c-heal").onclick = () => post({ action: "heal" }, "Heal the partition (lift every ban)?");
  $("c-send").onclick = () => post({ action: "send", from: $("c-from").value, to: $("c-to").value, amount: Number($("c-amount").value) },
    `Send ${$("c-amount").value} from ${$("c-from").value} to ${$("c-to").value}?`);
}

// ---------------------------------------------------------------- details, tabs, wiring
async function showBlock(hash) {
  const box = $("details");
  box.classList.remove("hidden");
  box.innerHTML = "loading…";
  const resp = await fetch(`/api/block?hash=${hash}`);
  const d = await resp.json();
  if (d.error) { box.innerHTML = `<button class="close">×</button>${esc(d.error)}`; return; }
  const b = d.block;
  const txs = list(b.tx).map((t, k) => `<div><span class="txlink" data-txid="${esc(t)}">${esc(t)}</span>${k === 0 ? " (coinbase)" : ""}</div>`).join("");
  box.innerHTML = `<button class="close" title="close">×</button><h2>Block ${esc(b.height)}</h2><dl>
    <dt>hash</dt><dd>${esc(b.hash)}</dd><dt>parent</dt><dd>${esc(b.previousblockhash)}</dd>
    <dt>mined by</dt><dd>${esc(d.miner)} (first seen on ${esc(d.first_node)})</dd>
    <dt>time</dt><dd>${clock(b.time)} (first seen here ${d.seen ? clock(d.seen) : "?"})</dd>
    <dt>transactions</dt><dd>${esc(b.nTx)}</dd><dt>size</dt><dd>${esc(b.size)} bytes</dd>
    <dt>on the chain of</dt><dd>${esc(list(d.on_active_chain_of).join(", ") || "no node (stale)")}</dd>
    ${d.mark ? `<dt>attack</dt><dd>${esc(d.mark)}</dd>` : ""}
    <dt>chainwork</dt><dd>${esc(b.chainwork)}</dd></dl><b>Transactions</b> (click to follow a payment)${txs}`;
}

function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("on", b.dataset.tab === name);
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("on", t.id === `tab-${name}`);
  if (name === "log") renderLog();
}
window.powlabShowTab = showTab;

function wire() {
  for (const b of document.querySelectorAll(".tabs button")) b.onclick = () => showTab(b.dataset.tab);
  $("tree").addEventListener("click", (ev) => {
    const g = ev.target.closest(".blk");
    if (g) showBlock(g.dataset.hash);
  });
  $("details").addEventListener("click", (ev) => {
    if (ev.target.classList.contains("close")) $("details").classList.add("hidden");
    if (ev.target.dataset.txid) { $("details").classList.add("hidden"); track(ev.target.dataset.txid); }
  });
  $("track-form").onsubmit = (ev) => { ev.preventDefault(); track($("track-txid").value); };
  $("log").addEventListener("click", (ev) => {
    const li = ev.target.closest("li");
    if (li) seek(Number(li.dataset.index));
  });
  const cur = () => (S.playback === null ? S.log.length - 1 : S.playback);
  $("pb-first").onclick = () => seek(0);
  $("pb-back").onclick = () => seek(cur() - 1);
  $("pb-fwd").onclick = () => (S.playback !== null && S.playback >= S.log.length - 1 ? seek(null) : seek(cur() + 1));
  $("pb-live").onclick = () => seek(null);
  $("pb-slider").oninput = (ev) => seek(Number(ev.target.value));
  setInterval(() => { if (S.tracked.length) refreshPayments(); }, 3000);
}

// For the tests and the benchmark: draw a given snapshot (no server involved).
// It stops following the server first, so nothing live mixes in.
window.powlabLoad = (snap) => {
  if (stream) { stream.close(); stream = null; $("conn").textContent = "offline (loaded)"; }
  applySnapshot(snap); S.fresh.clear(); renderAll();
  return window.powlabStats.lastRenderMs;
};

// The token has set its cookie with the page: it leaves the address bar (and the history).
if (new URLSearchParams(location.search).has("token")) {
  const clean = new URL(location.href);
  clean.searchParams.delete("token");
  history.replaceState(null, "", clean.pathname + clean.search + clean.hash);
}
wire();
connect();
