// The block tree: layout (heights top-down, newest on top; branches side by side; long
// linear runs collapsed) and rendering to one SVG string. No DOM access here except through
// the string, so a 10,000-block tree is laid out and drawn in one pass.

export const LAYOUT = {
  boxW: 176, boxH: 42, colW: 300, rowH: 58, runH: 38, left: 74, top: 34,
  keepRecent: 14, // newest heights always drawn block by block
  minRun: 3, // fewer uninteresting heights than this in a row are not collapsed
  context: 1, // heights kept around an interesting one
};

const PALETTE = ["#2563eb", "#d92d20", "#059669", "#9333ea", "#c2410c", "#0891b2", "#db2777",
  "#4d7c0f", "#7c3aed", "#b45309", "#0f766e", "#be123c"];

export function nodeColour(name, names) {
  const k = Math.max(0, names.indexOf(name));
  return PALETTE[k % PALETTE.length];
}

const esc = (s) => String(s).replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function clock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}

// blocks: Map hash -> {hash, prev, height, time, txs, miner, invalid, seen}
// tips: {node: hash}; marks: {hash16: label}
export function layoutTree(blocks, tips, marks, finalityDepth) {
  const all = [...blocks.values()].sort((a, b) => a.height - b.height || a.seen - b.seen);
  if (!all.length) return null;
  const children = new Map();
  for (const b of all) {
    if (!children.has(b.prev)) children.set(b.prev, []);
    children.get(b.prev).push(b);
  }
  // Which node tips sit on each block; the best tip (highest; most nodes on a tie).
  const tipNodes = new Map();
  for (const [node, hash] of Object.entries(tips)) {
    if (!blocks.has(hash)) continue;
    if (!tipNodes.has(hash)) tipNodes.set(hash, []);
    tipNodes.get(hash).push(node);
  }
  let best = null;
  for (const [hash, nodes] of tipNodes) {
    const b = blocks.get(hash);
    if (!best || b.height > best.b.height || (b.height === best.b.height && nodes.length > best.n)) {
      best = { b, n: nodes.length };
    }
  }
  const bestTip = best ? best.b : all[all.length - 1];
  // Live: on some node's chain. Main: on the best tip's chain.
  const live = new Set();
  for (const hash of tipNodes.keys()) {
    let c = blocks.get(hash);
    while (c && !live.has(c.hash)) { live.add(c.hash); c = blocks.get(c.prev); }
  }
  const main = new Set();
  for (let c = bestTip; c; c = blocks.get(c.prev)) main.add(c.hash);
  if (!tipNodes.size) for (const h of main) live.add(h);
  // Subtree top height, for reserving a column for a whole branch.
  const top = new Map();
  for (let k = all.length - 1; k >= 0; k--) {
    const b = all[k];
    let t = b.height;
    for (const c of children.get(b.hash) || []) t = Math.max(t, top.get(c.hash));
    top.set(b.hash, t);
  }
  const col = new Map();
  const colEnd = [Infinity];
  const primary = new Set(); // parents whose branch continues in their own column
  for (const b of all) {
    if (main.has(b.hash)) { col.set(b.hash, 0); continue; }
    const p = blocks.get(b.prev);
    if (p && col.has(p.hash) && col.get(p.hash) !== 0 && !primary.has(p.hash)) {
      primary.add(p.hash);
      col.set(b.hash, col.get(p.hash));
      continue;
    }
    let c = 1;
    while (c < colEnd.length && colEnd[c] >= b.height - 1) c++;
    colEnd[c] = top.get(b.hash);
    col.set(b.hash, c);
  }
  // Rows: interesting heights drawn block by block, the rest collapsed into runs.
  const minH = all[0].height;
  const maxH = all[all.length - 1].height;
  const finalH = bestTip.height - finalityDepth + 1;
  const keep = new Set();
  const want = (h) => { for (let d = -LAYOUT.context; d <= LAYOUT.context; d++) keep.add(h + d); };
  for (let h = Math.max(minH, maxH - LAYOUT.keepRecent); h <= maxH; h++) keep.add(h);
  keep.add(minH);
  want(finalH); want(finalH + 1);
  for (const b of all) {
    if (!main.has(b.hash) || b.invalid || marks[b.hash.slice(0, 16)] || tipNodes.has(b.hash)) {
      want(b.height);
      if (!main.has(b.hash)) want(b.height - 1);
    }
  }
  const byHeight = new Map();
  for (const b of all) {
    if (!byHeight.has(b.height)) byHeight.set(b.height, []);
    byHeight.get(b.height).push(b);
  }
  const rows = []; // {kind: "h", h, y} | {kind: "run", from, to, y}
  let y = LAYOUT.top;
  // Only heights that hold blocks are visited (a gap costs nothing, however wide).
  const heights = [...byHeight.keys()].sort((a, b) => b - a);
  let i = 0;
  while (i < heights.length) {
    const h = heights[i];
    if (keep.has(h)) {
      rows.push({ kind: "h", h, y }); y += LAYOUT.rowH;
      i++;
      continue;
    }
    let j = i;
    while (j + 1 < heights.length && heights[j + 1] === heights[j] - 1 && !keep.has(heights[j + 1])) j++;
    const lo = heights[j];
    if (h - lo + 1 >= LAYOUT.minRun) {
      rows.push({ kind: "run", from: lo, to: h, y });
      y += LAYOUT.runH + (LAYOUT.rowH - LAYOUT.boxH);
    } else {
      for (let k = i; k <= j; k++) { rows.push({ kind: "h", h: heights[k], y }); y += LAYOUT.rowH; }
    }
    i = j + 1;
  }
  return { all, blocks, byHeight, rows, col, colCount: colEnd.length, live, main, tipNodes,
    bestTip, finalH, height: y + 10 };
}

export function renderTree(lay, marks, nodeNames, fresh) {
  if (!lay) return '<p class="muted" style="padding:20px">No blocks yet.</p>';
  const { boxW, boxH, colW, left } = LAYOUT;
  const x0 = (c) => left + c * colW;
  const pos = new Map(); // hash -> [x, y] of the box's top-left
  const runOf = new Map(); // height -> run row
  for (const r of lay.rows) {
    if (r.kind === "h") for (const b of lay.byHeight.get(r.h)) pos.set(b.hash, [x0(lay.col.get(b.hash)), r.y]);
    else for (let k = r.from; k <= r.to; k++) runOf.set(k, r);
  }
  const width = Math.max(720, left + lay.colCount * colW + 40);
  const out = [];
  const edges = [];
  const boxes = [];
  const labels = [];
  const finalised = lay.finalH;
  for (const r of lay.rows) {
    if (r.kind === "run") {
      const n = r.to - r.from + 1;
      boxes.push(`<g class="run" data-from="${r.from}" data-to="${r.to}"><rect x="${x0(0)}" y="${r.y}" width="${boxW}" height="${LAYOUT.runH}"/>` +
        `<text x="${x0(0) + boxW / 2}" y="${r.y + 24}" text-anchor="middle">${n} blocks (${r.from}…${r.to})</text></g>`);
      labels.push(`<text x="8" y="${r.y + 24}" font-size="12" fill="#98a2b3">${r.to}</text>`);
      // the run continues the main chain above and below it
      edges.push(`<line class="edge" x1="${x0(0) + boxW / 2}" y1="${r.y + LAYOUT.runH}" x2="${x0(0) + boxW / 2}" y2="${r.y + LAYOUT.runH + LAYOUT.rowH - boxH}"/>`);
      continue;
    }
    labels.push(`<text x="8" y="${r.y + 26}" font-size="13" fill="#475467">#${r.h}</text>`);
    for (const b of lay.byHeight.get(r.h)) {
      const [x, y] = pos.get(b.hash);
      const stale = !lay.live.has(b.hash);
      const mark = marks[b.hash.slice(0, 16)];
      const cls = ["blk", stale ? "stale" : (lay.main.has(b.hash) && b.height <= finalised ? "final" : "active")];
      if (b.invalid) cls.push("invalid");
      if (mark) cls.push(`mark-${mark}`);
      if (fresh && fresh.has(b.hash)) cls.push("new");
      const miner = b.miner || "?";
      const tx = b.txs === 1 ? "1 tx" : `${b.txs} txs`;
      let g = `<g class="${cls.join(" ")}" data-hash="${b.hash}" data-height="${b.height}" data-miner="${esc(miner)}"><title>${b.hash}</title>` +
        `<rect class="box" x="${x}" y="${y}" width="${boxW}" height="${boxH}"/>` +
        `<text class="t1" x="${x + 8}" y="${y + 17}">${esc(miner)} <tspan class="t2" font-weight="normal">${b.hash.slice(0, 8)}</tspan></text>` +
        `<text class="t2" x="${x + 8}" y="${y + 34}">${tx} · ${clock(b.time)}</text>`;
      if (mark || b.invalid) {
        g += `<text class="mk" x="${x + boxW - 6}" y="${y + 14}" text-anchor="end">${b.invalid ? "INVALID" : mark.toUpperCase()}</text>`;
      }
      boxes.push(g + "</g>");
      // edge to the parent
      const p = lay.blocks.get(b.prev);
      const cx = x + boxW / 2;
      if (p && pos.has(p.hash)) {
        const [px, py] = pos.get(p.hash);
        const pcx = px + boxW / 2;
        const sc = stale ? " stale" : "";
        if (pcx === cx) edges.push(`<line class="edge${sc}" x1="${cx}" y1="${y + boxH}" x2="${pcx}" y2="${py}"/>`);
        else edges.push(`<path class="edge${sc}" d="M${cx} ${y + boxH} L${cx} ${py - 8} L${pcx + boxW / 2} ${py + 6}"/>`);
      } else if (runOf.has(b.height - 1)) {
        const run = runOf.get(b.height - 1);
        edges.push(`<line class="edge" x1="${cx}" y1="${y + boxH}" x2="${cx}" y2="${run.y}"/>`);
      }
    }
  }
  // node tips
  for (const [hash, nodes] of lay.tipNodes) {
    if (!pos.has(hash)) continue;
    const [x, y] = pos.get(hash);
    nodes.sort();
    const shown = nodes.length > 4 ? [...nodes.slice(0, 3), `+${nodes.length - 3}`] : nodes;
    let tx = x + boxW + 8;
    for (const name of shown) {
      const w = 12 + 8.5 * name.length;
      const colour = name.startsWith("+") ? "#475467" : nodeColour(name, nodeNames);
      labels.push(`<g class="tip" data-node="${esc(name)}" data-hash="${hash}"><rect x="${tx}" y="${y + 10}" width="${w}" height="22" fill="${colour}"/>` +
        `<text x="${tx + w / 2}" y="${y + 26}" text-anchor="middle">${esc(name)}</text></g>`);
      tx += w + 4;
    }
  }
  // the finality line: blocks of the best chain below it have finality_depth confirmations
  const finalRow = lay.rows.find((r) => r.kind === "h" && r.h === lay.finalH);
  if (finalRow) {
    const ly = finalRow.y - (LAYOUT.rowH - boxH) / 2;
    labels.push(`<g class="finality"><line x1="0" y1="${ly}" x2="${width}" y2="${ly}"/>` +
      `<text x="${left + boxW + 10}" y="${ly - 5}">▼ final below: ≥ ${lay.bestTip.height - lay.finalH + 1} confirmations</text></g>`);
  }
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${lay.height}" data-blocks="${lay.all.length}">`);
  out.push(edges.join(""), boxes.join(""), labels.join(""), "</svg>");
  return out.join("");
}
