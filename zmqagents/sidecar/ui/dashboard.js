// The admin dashboard (/ui): polls /ui/api/status (this node, its counters, its peers) and
// /ui/api/graph (the part of the mesh this node can crawl; the server crawls at most every few
// seconds, whatever the number of viewers) and redraws. Rates are counter deltas between polls.
"use strict";

(() => {
  const STATUS_EVERY = 2000, GRAPH_EVERY = 3000;
  const memory = new Map();
  let last = null;

  const $ = id => document.getElementById(id);

  function rows(tbody, list) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    for (const cells of list) {
      const tr = document.createElement("tr");
      cells.forEach((cell, i) => {
        const td = document.createElement("td");
        const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    }
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "-";
    return typeof value === "number" ? value.toLocaleString(undefined, {maximumFractionDigits: digits || 0}) : String(value);
  }

  function showStatus(s) {
    $("node-id").textContent = s.node_id;
    rows($("status"), [
      ["contact", [s.contact, "mono"]], ["version", s.version], ["running", s.running ? "yes" : "no"],
      ["routing table", fmt(s.gauges.peers) + " contacts"],
      ["neighbours", fmt(s.gauges.neighbours)], ["inbox", fmt(s.gauges.inbox_messages) + " messages"],
      ["unacked", fmt(s.gauges.unacked_messages)],
    ]);
    const rates = [];
    for (const [name, value] of Object.entries(s.counters)) {
      let rate = null;
      if (last && s.time > last.time && typeof last.counters[name] === "number") {
        rate = (value - last.counters[name]) / (s.time - last.time);
      }
      rates.push([name.replace(/_/g, " "), [fmt(rate, 1), "num"], [fmt(value), "num"]]);
    }
    rows($("rates"), rates);
    last = s;
    const now = s.time;
    $("peer-count").textContent = `(${s.peers.length})`;
    rows($("peers"), s.peers.map(p => [
      [p.node_id.slice(0, 12), "mono"], [p.state, "state-" + p.state], [fmt(p.incarnation), "num"],
      [p.rtt_ms === null ? "-" : fmt(p.rtt_ms, 2), "num"], [fmt(now - p.last_seen, 1), "num"],
      [p.contact.slice(p.contact.indexOf("@") + 1), "mono"],
    ]));
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  function showGraph(g) {
    MeshGraph.draw($("mesh"), g, memory);
    const c = g.crawl || {};
    $("graph-info").textContent = `${g.nodes.length} nodes, ${c.messages_sent || 0} requests, ` +
      (g.crawling ? "crawling…" : `crawled ${fmt(g.age_s, 0)} s ago`);
  }

  async function poll(path, show, every) {
    try {
      const resp = await fetch(path, {cache: "no-store"});
      if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
      show(await resp.json());
      $("error").textContent = "";
    } catch (err) {
      $("error").textContent = String(err.message || err);
    }
    setTimeout(() => poll(path, show, every), every);
  }

  MeshGraph.legend($("legend"));
  poll("/ui/api/status", showStatus, STATUS_EVERY);
  poll("/ui/api/graph", showGraph, GRAPH_EVERY);
})();
