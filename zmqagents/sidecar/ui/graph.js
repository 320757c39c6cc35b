// Draws a crawled mesh ({"nodes": [...], "edges": [...]}, zmqagents/core/crawl.py) as SVG.
//
// Used by the admin dashboard (/ui) and by `zmqagents mesh graph --format html`, which inlines this
// file, so it depends on nothing but the browser. Layout: a spring model (Fruchterman-Reingold)
// run a fixed number of steps from positions kept between redraws, so a live graph moves only
// where the mesh changed. Every node is a <g class="node" data-id="HEX" data-state="STATE">, which
// is what the browser test counts.
"use strict";

const MeshGraph = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = {answered: "#2e9d4f", unreachable: "#c0392b", bad_answer: "#8e44ad", unvisited: "#95a5a6"};
  const STATE_TEXT = {answered: "answered", unreachable: "did not answer", bad_answer: "answered garbage",
                      unvisited: "not asked"};

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  // One undirected link per pair of nodes: who lists whom, the worst state, the best RTT.
  function links(graph, known) {
    const pairs = new Map();
    for (const e of graph.edges || []) {
      if (!known.has(e.from) || !known.has(e.to)) continue;
      const key = e.from < e.to ? e.from + " " + e.to : e.to + " " + e.from;
      const link = pairs.get(key) || {a: e.from < e.to ? e.from : e.to, b: e.from < e.to ? e.to : e.from,
                                      listed: 0, suspect: false, rtt: null};
      link.listed += 1;
      link.suspect = link.suspect || e.state === "suspect";
      if (typeof e.rtt_ms === "number") link.rtt = link.rtt === null ? e.rtt_ms : Math.min(link.rtt, e.rtt_ms);
      pairs.set(key, link);
    }
    return [...pairs.values()];
  }

  // Positions in the unit square, kept across calls in `memory` (a Map id -> {x, y}).
  function layout(nodes, pairs, memory, steps) {
    const n = nodes.length;
    const index = new Map(nodes.map((node, i) => [node.id, i]));
    const x = new Float64Array(n), y = new Float64Array(n);
    nodes.forEach((node, i) => {
      const kept = memory.get(node.id);
      const angle = 2 * Math.PI * i / Math.max(1, n);
      x[i] = kept ? kept.x : 0.5 + 0.35 * Math.cos(angle);
      y[i] = kept ? kept.y : 0.5 + 0.35 * Math.sin(angle);
    });
    const k = Math.sqrt(1 / Math.max(1, n));
    let t = memory.size ? 0.03 : 0.1;
    for (let step = 0; step < steps; step++) {
      const dx = new Float64Array(n), dy = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        for (let j = i + 1; j < n; j++) {
          let ddx = x[i] - x[j], ddy = y[i] - y[j];
          const d2 = Math.max(1e-6, ddx * ddx + ddy * ddy);
          const f = k * k / d2;
          dx[i] += ddx * f; dy[i] += ddy * f; dx[j] -= ddx * f; dy[j] -= ddy * f;
        }
      }
      for (const p of pairs) {
        const i = index.get(p.a), j = index.get(p.b);
        const ddx = x[i] - x[j], ddy = y[i] - y[j];
        const d = Math.max(1e-3, Math.sqrt(ddx * ddx + ddy * ddy));
        const f = d / k;
        dx[i] -= ddx * f; dy[i] -= ddy * f; dx[j] += ddx * f; dy[j] += ddy * f;
      }
      for (let i = 0; i < n; i++) {
        const d = Math.max(1e-9, Math.sqrt(dx[i] * dx[i] + dy[i] * dy[i]));
        const move = Math.min(d, t);
        x[i] = Math.min(0.97, Math.max(0.03, x[i] + dx[i] / d * move));
        y[i] = Math.min(0.97, Math.max(0.03, y[i] + dy[i] / d * move));
      }
      t *= 0.97;
    }
    // Stretch the drawing over the whole box: a dense mesh (every node lists half the others) pulls
    // itself into a small ball, which says nothing more than the same picture at full size.
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      minX = Math.min(minX, x[i]); maxX = Math.max(maxX, x[i]); minY = Math.min(minY, y[i]); maxY = Math.max(maxY, y[i]);
    }
    const sx = maxX - minX > 1e-6 ? 0.88 / (maxX - minX) : 0, sy = maxY - minY > 1e-6 ? 0.88 / (maxY - minY) : 0;
    for (let i = 0; i < n; i++) {
      x[i] = sx ? 0.06 + (x[i] - minX) * sx : 0.5;
      y[i] = sy ? 0.06 + (y[i] - minY) * sy : 0.5;
    }
    memory.clear();
    nodes.forEach((node, i) => memory.set(node.id, {x: x[i], y: y[i]}));
  }

  function label(node) {
    const caps = node.capabilities && node.capabilities.length ? " " + node.capabilities.slice(0, 3).join(", ") +
      (node.capabilities.length > 3 ? ", …" : "") : "";
    return node.id.slice(0, 8) + caps;
  }

  function tooltip(node) {
    const seen = node.seen || {};
    return [node.id, node.contact, STATE_TEXT[node.state] || node.state,
            "capabilities: " + (node.capabilities === null || node.capabilities === undefined ? "unknown" :
                                (node.capabilities.join(", ") || "none")),
            "routing table: " + (node.table_size === null ? "unknown" : node.table_size + " contacts"),
            "listed as alive/suspect/unprobed by " + [seen.alive || 0, seen.suspect || 0, seen.unprobed || 0].join("/")]
      .join("\n");
  }

  // Draw `graph` into `svg` (an <svg> element); `memory` keeps positions between draws.
  function draw(svg, graph, memory) {
    const nodes = (graph.nodes || []).filter(n => typeof n.id === "string");
    const known = new Set(nodes.map(n => n.id));
    const pairs = links(graph, known);
    layout(nodes, pairs, memory, memory.size ? 60 : 300);
    const width = 1000, height = 700;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const at = id => memory.get(id);
    const edges = el("g", {class: pairs.length > 300 ? "edges dense" : "edges"}, svg);
    for (const p of pairs) {
      const a = at(p.a), b = at(p.b);
      const line = el("line", {x1: a.x * width, y1: a.y * height, x2: b.x * width, y2: b.y * height,
                               class: "edge" + (p.suspect ? " suspect" : "") + (p.listed > 1 ? " mutual" : ""),
                               "data-a": p.a, "data-b": p.b}, edges);
      el("title", {}, line).textContent = `${p.a.slice(0, 8)} – ${p.b.slice(0, 8)}` +
        (p.rtt === null ? "" : `: ${p.rtt.toFixed(2)} ms`) + (p.listed > 1 ? " (both list each other)" : "");
    }
    const group = el("g", {class: nodes.length > 40 ? "nodes crowded" : "nodes"}, svg);  // crowded: labels on hover
    for (const node of nodes) {
      const p = at(node.id);
      const g = el("g", {class: "node" + (node.local ? " local" : ""), "data-id": node.id, "data-state": node.state,
                         transform: `translate(${(p.x * width).toFixed(1)},${(p.y * height).toFixed(1)})`}, group);
      el("circle", {r: node.local ? 11 : 8, fill: COLOURS[node.state] || "#7f8c8d",
                    class: (node.seen && node.seen.suspect) ? "suspected" : ""}, g);
      el("text", {x: 12, y: 4}, g).textContent = label(node);
      el("title", {}, g).textContent = tooltip(node);
    }
    svg.setAttribute("data-nodes-drawn", String(nodes.length));
    svg.setAttribute("data-links-drawn", String(pairs.length));
  }

  function legend(parent) {
    for (const [state, colour] of Object.entries(COLOURS)) {
      const item = document.createElement("span");
      item.className = "legend-item";
      const dot = document.createElement("span");
      dot.className = "legend-dot";
      dot.style.background = colour;
      item.appendChild(dot);
      item.appendChild(document.createTextNode(STATE_TEXT[state]));
      parent.appendChild(item);
    }
  }

  return {draw, legend};
})();
