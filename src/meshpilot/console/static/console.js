// meshpilot console: a small single-page app over the console's JSON API.
//
// No framework and nothing from a CDN: the page must work offline and under a strict CSP
// (no inline script). Every view is a function of one API answer; text from the server is
// always set as text (never as HTML). Routes live in the URL hash:
//
//   #/graph?aggregate=auto&q=&focus=&namespace=   topology with traffic on each edge
//   #/services   #/service/<ns>/<host>             services, one service
//   #/proxies    #/proxy/<id>                      proxies, one proxy with its push history
//   #/config                                       config with analysis messages
//
// The graph is laid out by a small layered algorithm (sources left, what they call to the
// right; ranks by longest path with cycles broken, rows ordered by their callers' positions)
// and drawn as plain SVG. Large meshes are reduced on the server (aggregation, search, focus,
// a node limit), so the page never draws more than it can.
"use strict";

(function () {
  const view = document.getElementById("view");
  const statusLine = document.getElementById("status");
  let refreshTimer = null;
  let graphState = { viewBox: null, selected: null, key: "" };

  // DOM helpers ----------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  // Replace the page's content; null and false children are skipped (replaceChildren would
  // print them as text).
  function show(...children) {
    view.replaceChildren();
    append(view, children);
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function badge(text, cls) {
    return h("span", { class: "badge " + (cls || text) }, text);
  }

  function table(headers, rows, attrs) {
    return h("table", attrs || {},
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: numeric(x) ? "num" : null }, x)))),
      h("tbody", {}, rows));
  }

  function numeric(header) {
    return /^(rps|errors|p50|p99|requests|total|endpoints|pushes|resources|changed|removed|apply|cps)/i.test(header);
  }

  function td(value, cls) {
    return h("td", { class: cls || null }, value);
  }

  function fmtRate(x) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    return x >= 100 ? x.toFixed(0) : x >= 1 ? x.toFixed(1) : x.toFixed(2);
  }

  function fmtPct(x) {
    return x ? (x * 100).toFixed(x < 0.1 ? 1 : 0) + "%" : "0%";
  }

  function fmtMs(x) {
    return x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) + " ms" : x.toFixed(1) + " ms";
  }

  function fmtTime(t) {
    return t ? new Date(t * 1000).toLocaleTimeString() : "–";
  }

  function errorClass(rate) {
    return rate >= 0.05 ? "bad" : rate >= 0.01 ? "warn" : "ok";
  }

  // API ------------------------------------------------------------------------------------

  async function get(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      const body = await response.json().catch(() => ({}));
      const next = encodeURIComponent("/" + location.hash);
      location.href = "/login?next=" + next + (body.reason && body.reason !== "none" ? "&reason=" + encodeURIComponent(body.reason) : "");
      throw new Error("login required");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    return body;
  }

  // Routing --------------------------------------------------------------------------------

  function parseHash() {
    const hash = location.hash.replace(/^#/, "") || "/graph";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, params };
  }

  function hashFor(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v) query.set(k, v);
    const text = query.toString();
    return "#" + path + (text ? "?" + text : "");
  }

  async function route() {
    clearInterval(refreshTimer);
    refreshTimer = null;
    const { parts, params } = parseHash();
    const page = parts[0] || "graph";
    for (const link of document.querySelectorAll("header nav a")) {
      link.classList.toggle("active", link.id === "nav-" + page.replace(/^(service|proxy)$/, "$1s"));
    }
    show(h("p", { class: "muted" }, "Loading…"));
    try {
      if (page === "graph") await graphView(params);
      else if (page === "services") await servicesView();
      else if (page === "service") await serviceView(parts[1], parts.slice(2).join("/"));
      else if (page === "proxies") await proxiesView();
      else if (page === "proxy") await proxyView(parts.slice(1).join("/"));
      else if (page === "config") await configView(params);
      else show(h("p", {}, "No such page."));
      document.body.dataset.view = page;
    } catch (error) {
      show(h("p", { class: "error-text", id: "error" }, String(error.message || error)));
    }
  }

  // Graph ----------------------------------------------------------------------------------

  const NODE_W = 170, NODE_H = 34, COL_W = 360, ROW_H = 56;

  function layout(nodes, edges) {
    const ids = nodes.map((n) => n.id);
    const out = new Map(ids.map((id) => [id, []]));
    const inc = new Map(ids.map((id) => [id, []]));
    for (const e of edges) {
      if (e.source === e.target || !out.has(e.source) || !out.has(e.target)) continue;
      out.get(e.source).push(e.target);
      inc.get(e.target).push(e.source);
    }
    // Ranks: longest path from the sources (Kahn's order); a cycle is broken at the node
    // with the fewest unprocessed callers.
    const indegree = new Map(ids.map((id) => [id, inc.get(id).length]));
    const rank = new Map();
    const done = new Set();
    let queue = ids.filter((id) => indegree.get(id) === 0);
    for (const id of queue) rank.set(id, 0);
    while (done.size < ids.length) {
      while (queue.length) {
        const id = queue.shift();
        if (done.has(id)) continue;
        done.add(id);
        for (const t of out.get(id)) {
          if (done.has(t)) continue;
          rank.set(t, Math.max(rank.get(t) || 0, (rank.get(id) || 0) + 1));
          indegree.set(t, indegree.get(t) - 1);
          if (indegree.get(t) === 0) queue.push(t);
        }
      }
      if (done.size < ids.length) {
        let best = null;
        for (const id of ids) {
          if (!done.has(id) && (best === null || indegree.get(id) < indegree.get(best))) best = id;
        }
        if (!rank.has(best)) rank.set(best, 0);
        queue = [best];
      }
    }
    // Columns: one per rank, wrapped so no column is much taller than the graph is wide.
    const perColumn = Math.max(12, Math.ceil(Math.sqrt(ids.length) * 1.6));
    const byRank = new Map();
    for (const id of ids) {
      const r = rank.get(id) || 0;
      if (!byRank.has(r)) byRank.set(r, []);
      byRank.get(r).push(id);
    }
    const position = new Map();
    let column = 0;
    const nodeById = new Map(nodes.map((n) => [n.id, n]));
    for (const r of [...byRank.keys()].sort((a, b) => a - b)) {
      const members = byRank.get(r);
      // Order a rank by its callers' rows (barycenter), then by name.
      const weight = (id) => {
        const ys = inc.get(id).filter((p) => position.has(p)).map((p) => position.get(p).y);
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
      };
      members.sort((a, b) => weight(a) - weight(b) || nodeById.get(a).name.localeCompare(nodeById.get(b).name));
      for (let i = 0; i < members.length; i += perColumn) {
        const chunk = members.slice(i, i + perColumn);
        chunk.forEach((id, row) => position.set(id, { x: column * COL_W, y: row * ROW_H }));
        column += 1;
      }
    }
    return position;
  }

  function nodeShape(node) {
    const w = NODE_W, hgt = NODE_H;
    const fill = { service: "#ebf8ff", external: "#fffaf0", workload: "#f0fff4", gateway: "#faf5ff", namespace: "#edf2f7" }[node.kind] || "#fff";
    const stroke = { service: "#3182ce", external: "#dd6b20", workload: "#38a169", gateway: "#805ad5", namespace: "#4a5568" }[node.kind] || "#4a5568";
    const errors = node.in && node.in.errorRate >= 0.01;
    const attrs = { width: w, height: hgt, fill, stroke: errors ? "#e53e3e" : stroke, "stroke-width": errors ? 2.5 : 1.5 };
    if (node.kind === "service") return s("rect", { ...attrs, rx: 17 });
    if (node.kind === "external") return s("rect", { ...attrs, rx: 17, "stroke-dasharray": "5 3" });
    if (node.kind === "namespace") return s("rect", { ...attrs, rx: 6, "stroke-width": 3 });
    if (node.kind === "gateway") {
      return s("polygon", { points: `12,0 ${w - 12},0 ${w},${hgt / 2} ${w - 12},${hgt} 12,${hgt} 0,${hgt / 2}`, fill, stroke: attrs.stroke, "stroke-width": attrs["stroke-width"] });
    }
    return s("rect", { ...attrs, rx: 3 });
  }

  function truncate(text, n) {
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  function edgeColor(edge) {
    if (edge.kind !== "traffic") return "#cbd5e0";
    if (!edge.rps && !edge.cps) return "#a0aec0";
    return { ok: "#38a169", warn: "#dd6b20", bad: "#e53e3e" }[errorClass(edge.errorRate)];
  }

  function edgeLabel(edge) {
    if (edge.kind !== "traffic") return "";
    if (edge.protocol === "tcp") return fmtRate(edge.cps) + " conn/s";
    let text = fmtRate(edge.rps) + " rps";
    if (edge.errorRate) text += " · " + fmtPct(edge.errorRate) + " err";
    if (edge.p99Ms !== null && edge.p99Ms !== undefined) text += " · p99 " + fmtMs(edge.p99Ms);
    return text;
  }

  function drawGraph(container, data, onSelect) {
    const position = layout(data.nodes, data.edges);
    let maxX = 0, maxY = 0;
    for (const p of position.values()) {
      maxX = Math.max(maxX, p.x + NODE_W);
      maxY = Math.max(maxY, p.y + NODE_H);
    }
    const pad = 40;
    const full = [-pad, -pad, maxX + 2 * pad, maxY + 2 * pad];
    const svg = s("svg", { id: "graph-svg", xmlns: SVG, role: "img", "aria-label": "service graph", "data-nodes": data.nodes.length, "data-edges": data.edges.length });
    svg.appendChild(s("defs", {},
      ["ok", "warn", "bad", "idle", "member"].map((k) => s("marker", { id: "arrow-" + k, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: { ok: "#38a169", warn: "#dd6b20", bad: "#e53e3e", idle: "#a0aec0", member: "#cbd5e0" }[k] })))));
    const edgeLayer = s("g", { class: "edges" });
    const nodeLayer = s("g", { class: "nodes" });
    const labels = data.edges.length <= 150;
    for (const edge of data.edges) {
      const a = position.get(edge.source), b = position.get(edge.target);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2;
      let x2 = b.x, y2 = b.y + NODE_H / 2, d;
      if (x2 > x1) {
        const mid = (x1 + x2) / 2;
        d = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`;
      } else {
        // Back or same-column edge: loop around below.
        x2 = b.x + NODE_W / 2;
        y2 = b.y + NODE_H;
        const drop = Math.max(y1, y2) + 40;
        d = `M ${a.x + NODE_W / 2} ${a.y + NODE_H} C ${a.x + NODE_W / 2} ${drop}, ${x2} ${drop}, ${x2} ${y2}`;
      }
      const color = edgeColor(edge);
      const key = edge.kind !== "traffic" ? "member" : !edge.rps && !edge.cps ? "idle" : errorClass(edge.errorRate);
      const width = edge.kind === "traffic" ? 1.5 + Math.min(6, Math.log10(1 + (edge.rps || edge.cps || 0)) * 3) : 1;
      const group = s("g", { class: "edge", "data-source": edge.source, "data-target": edge.target, "data-kind": edge.kind, "data-rps": edge.rps, "data-error-rate": edge.errorRate, "data-p99": edge.p99Ms === null ? "" : edge.p99Ms },
        s("title", {}, `${edge.source} → ${edge.target}\n${edge.kind === "traffic" ? edgeLabel(edge) + `\n${edge.requests} requests in the last ${edge.windowSeconds}s, ${edge.total} in total` : "endpoint of the service"}`),
        s("path", { d, stroke: color, "stroke-width": width, "stroke-dasharray": edge.kind === "traffic" ? null : "4 3", "marker-end": `url(#arrow-${key})` }));
      if (labels && edge.kind === "traffic") {
        const lx = (x1 + (x2 > x1 ? x2 : b.x + NODE_W / 2)) / 2, ly = (y1 + y2) / 2 - 4;
        group.appendChild(s("text", { x: lx, y: ly, "text-anchor": "middle" }, edgeLabel(edge)));
      }
      edgeLayer.appendChild(group);
    }
    for (const node of data.nodes) {
      const p = position.get(node.id);
      const classes = ["node", node.kind];
      if (node.match) classes.push("match");
      if (graphState.selected === node.id) classes.push("selected");
      const group = s("g", { class: classes.join(" "), transform: `translate(${p.x},${p.y})`, "data-id": node.id, "data-kind": node.kind, tabindex: 0 },
        s("title", {}, `${node.id}${node.members > 1 ? ` (${node.members} members)` : ""}`),
        nodeShape(node),
        s("text", { x: NODE_W / 2, y: 15, "text-anchor": "middle" }, truncate(node.name, 24)),
        s("text", { class: "sub", x: NODE_W / 2, y: 28, "text-anchor": "middle" },
          truncate(node.kind === "namespace" ? `${node.members} nodes` : node.namespace || "external", 28)));
      group.addEventListener("click", (event) => { event.stopPropagation(); onSelect(node); });
      nodeLayer.appendChild(group);
    }
    svg.appendChild(edgeLayer);
    svg.appendChild(nodeLayer);
    const box = graphState.viewBox && graphState.key === currentGraphKey() ? graphState.viewBox : full;
    graphState.viewBox = box.slice();
    graphState.key = currentGraphKey();
    svg.setAttribute("viewBox", box.join(" "));
    enablePanZoom(svg, full);
    container.replaceChildren(svg);
  }

  function currentGraphKey() {
    const { params } = parseHash();
    return ["aggregate", "q", "focus", "namespace"].map((k) => params.get(k) || "").join("|");
  }

  function enablePanZoom(svg, full) {
    let drag = null;
    const apply = () => svg.setAttribute("viewBox", graphState.viewBox.join(" "));
    svg.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = graphState.viewBox;
      const rect = svg.getBoundingClientRect();
      const fx = (event.clientX - rect.left) / rect.width, fy = (event.clientY - rect.top) / rect.height;
      const scale = event.deltaY > 0 ? 1.15 : 1 / 1.15;
      const w = Math.min(Math.max(box[2] * scale, 100), full[2] * 4), hgt = Math.min(Math.max(box[3] * scale, 60), full[3] * 4);
      graphState.viewBox = [box[0] + (box[2] - w) * fx, box[1] + (box[3] - hgt) * fy, w, hgt];
      apply();
    }, { passive: false });
    svg.addEventListener("mousedown", (event) => { drag = { x: event.clientX, y: event.clientY, box: graphState.viewBox.slice() }; });
    window.addEventListener("mouseup", () => { drag = null; });
    svg.addEventListener("mousemove", (event) => {
      if (!drag) return;
      const rect = svg.getBoundingClientRect();
      const k = drag.box[2] / rect.width;
      graphState.viewBox = [drag.box[0] - (event.clientX - drag.x) * k, drag.box[1] - (event.clientY - drag.y) * k, drag.box[2], drag.box[3]];
      apply();
    });
    svg.addEventListener("dblclick", () => { graphState.viewBox = full.slice(); apply(); });
  }

  function trafficList(title, t) {
    if (!t) return [];
    return [h("dt", {}, title), h("dd", {}, t.rps || t.total ? `${fmtRate(t.rps)} rps, ${fmtPct(t.errorRate)} errors, p50 ${fmtMs(t.p50Ms)}, p99 ${fmtMs(t.p99Ms)}` : t.cps ? `${fmtRate(t.cps)} conn/s` : "no traffic seen")];
  }

  function nodeDetails(node, params) {
    const links = [];
    if (node.kind === "service" && node.host) {
      links.push(h("a", { href: `#/service/${encodeURIComponent(node.namespace)}/${encodeURIComponent(node.host)}`, id: "open-service" }, "Open service page"));
    }
    for (const proxy of node.proxies || []) {
      links.push(h("a", { href: `#/proxy/${encodeURIComponent(proxy)}`, class: "open-proxy" }, "Proxy " + truncate(proxy, 40)));
    }
    if (node.kind === "namespace") {
      links.push(h("a", { href: hashFor("/graph", { aggregate: "service", namespace: node.namespace }), id: "expand-namespace" }, "Expand this namespace"));
    } else {
      links.push(h("a", { href: hashFor("/graph", { aggregate: params.get("aggregate"), focus: node.id }), id: "focus-node" }, "Focus on it and its neighbours"));
    }
    return [
      h("h2", {}, node.name),
      h("dl", {},
        h("dt", {}, "kind"), h("dd", {}, node.kind),
        h("dt", {}, "namespace"), h("dd", {}, node.namespace || "–"),
        node.members > 1 ? [h("dt", {}, "members"), h("dd", {}, node.members)] : [],
        trafficList("in", node.in), trafficList("out", node.out),
        node.internal ? trafficList("inside", node.internal) : []),
      h("ul", {}, links.map((a) => h("li", {}, a))),
    ];
  }

  async function graphView(params) {
    const aggregate = params.get("aggregate") || "auto";
    const search = h("input", { type: "search", id: "search", placeholder: "search nodes…", value: params.get("q") || "" });
    const select = h("select", { id: "aggregate" }, ["auto", "workload", "service", "namespace"].map((v) => h("option", { value: v, selected: v === aggregate }, v === "auto" ? "auto (fit the screen)" : "by " + v)));
    const go = (changes) => { location.hash = hashFor("/graph", { aggregate: params.get("aggregate"), q: params.get("q"), focus: params.get("focus"), namespace: params.get("namespace"), ...changes }); };
    select.addEventListener("change", () => go({ aggregate: select.value, focus: "" }));
    search.addEventListener("keydown", (event) => { if (event.key === "Enter") go({ q: search.value.trim() }); });
    const chips = [];
    for (const [key, label] of [["namespace", "namespace"], ["focus", "focus"], ["q", "search"]]) {
      if (params.get(key)) chips.push(h("span", { class: "chip", id: "chip-" + key }, `${label}: ${params.get(key)}`, h("a", { href: hashFor("/graph", { ...Object.fromEntries(params), [key]: "" }) }, "×")));
    }
    const info = h("span", { class: "muted", id: "graph-info" });
    const container = h("div", { id: "graph" }, h("div", { class: "empty" }, "Loading…"));
    const details = h("aside", { id: "details" }, h("p", { class: "muted" }, "Click a node for its traffic and links. Drag to pan, wheel to zoom, double-click to fit."));
    show(
      h("div", { class: "toolbar" }, select, search, chips, info),
      h("div", { class: "legend" },
        h("span", {}, h("i", { style: null, class: "l-ok" }), "edge colour: error rate < 1% green, < 5% orange, else red; width: request rate; dashed: endpoint without measured traffic")),
      h("div", { class: "graph-wrap" }, container, details));
    const load = async () => {
      const query = new URLSearchParams({ aggregate });
      for (const key of ["q", "focus", "namespace", "limit"]) if (params.get(key)) query.set(key, params.get(key));
      const data = await get("/api/graph?" + query.toString());
      window.meshpilotGraph = data;
      info.textContent = `${data.nodes.length} nodes, ${data.edges.length} edges, by ${data.aggregate}` +
        (data.truncated ? ` (the ${data.limit} busiest of ${data.totalNodes}: search or focus to see others)` : "") +
        ` · stats every ${data.stats.intervalSeconds}s from ${data.stats.proxies} proxies`;
      statusLine.textContent = data.version ? "config " + data.version : "not synced yet";
      if (!data.nodes.length) {
        container.replaceChildren(h("div", { class: "empty", id: "graph-empty" }, data.version ? "Nothing matches." : "The server has not synced yet."));
        return;
      }
      const onSelect = (node) => {
        graphState.selected = node.id;
        for (const el of container.querySelectorAll(".node")) el.classList.toggle("selected", el.dataset.id === node.id);
        details.replaceChildren(...nodeDetails(node, params));
      };
      drawGraph(container, data, onSelect);
      const selected = data.nodes.find((n) => n.id === graphState.selected);
      if (selected) details.replaceChildren(...nodeDetails(selected, params));
      document.body.dataset.graphLoaded = String(Date.now());
    };
    await load();
    refreshTimer = setInterval(() => load().catch((error) => { info.textContent = "refresh failed: " + error.message; }), 5000);
  }

  // Services -------------------------------------------------------------------------------

  async function servicesView() {
    const data = await get("/api/services");
    const filter = h("input", { type: "search", placeholder: "filter…", id: "filter" });
    const body = h("tbody", {});
    const render = () => {
      const needle = filter.value.toLowerCase();
      body.replaceChildren(...data.filter((x) => !needle || x.host.toLowerCase().includes(needle) || x.namespace.includes(needle)).slice(0, 2000).map((x) =>
        h("tr", {},
          td(h("a", { href: `#/service/${encodeURIComponent(x.namespace)}/${encodeURIComponent(x.host)}` }, x.host)),
          td(x.namespace), td(x.ports.join(", ")), td(x.registry), td(x.endpoints, "num"),
          td(fmtRate(x.traffic.rps), "num"), td(fmtPct(x.traffic.errorRate), "num"), td(fmtMs(x.traffic.p99Ms), "num"))));
    };
    filter.addEventListener("input", render);
    render();
    show(h("h1", {}, `Services (${data.length})`), h("div", { class: "toolbar" }, filter),
      h("table", { id: "services" }, h("thead", {}, h("tr", {}, ["host", "namespace", "ports", "registry", "endpoints", "rps", "errors", "p99"].map((x) => h("th", { class: numeric(x) ? "num" : null }, x)))), body));
  }

  function messageList(messages) {
    if (messages === null || messages === undefined) return h("span", { class: "muted" }, "analysis off");
    if (!messages.length) return badge("no messages", "ok");
    return h("ul", { class: "messages" }, messages.map((m) => h("li", {}, badge(m.level, m.level), " ", h("code", {}, m.code), " ", m.message, m.reference ? h("span", { class: "muted" }, ` (${m.reference})`) : null)));
  }

  function configBlock(c) {
    const spec = h("pre", { hidden: true }, JSON.stringify(c.spec, null, 2));
    const toggle = h("a", { href: "#", onclick: (event) => { event.preventDefault(); spec.hidden = !spec.hidden; } }, "spec");
    return h("tr", { class: "config", "data-kind": c.kind, "data-name": `${c.namespace}/${c.name}` },
      td(c.kind), td(`${c.namespace}/${c.name}`),
      td(c.applies === undefined ? "" : c.applies ? badge("applies", "ok") : h("span", { class: "applies-no" }, "does not apply here"), c.why ? h("div", { class: "muted" }, c.why) : null),
      td(c.origin || h("span", { class: "muted" }, "–")),
      td(messageList(c.analysis)), td(toggle, spec));
  }

  function cards(items) {
    return h("div", { class: "cards" }, items.map(([label, value, id]) => h("div", { class: "card", id: id || null }, h("div", { class: "value" }, value), h("div", { class: "label" }, label))));
  }

  async function serviceView(namespace, host) {
    const x = await get(`/api/services/${encodeURIComponent(namespace)}/${encodeURIComponent(host)}`);
    const t = x.traffic;
    show(
      h("h1", { id: "service-title" }, x.host),
      h("p", { class: "muted" }, `namespace ${x.namespace} · registry ${x.registry || "–"} · ${x.source || ""} · ${x.resolution} · ${x.location}`,
        " · ", h("a", { href: hashFor("/graph", { aggregate: "workload", focus: x.id }), id: "focus-in-graph" }, "show in graph")),
      cards([["requests/s in", fmtRate(t.rps), "service-rps"], ["errors", fmtPct(t.errorRate)], ["p50", fmtMs(t.p50Ms)], ["p99", fmtMs(t.p99Ms)], ["endpoints", x.endpoints.length]]),
      h("h2", {}, "Ports"),
      table(["name", "port", "protocol", "target port"], x.ports.map((p) => h("tr", {}, td(p.name), td(p.port), td(p.protocol), td(p.targetPort || "–")))),
      h("h2", {}, "Callers"),
      x.callers.length ? table(["from", "rps", "errors", "p50", "p99", "requests (total)"], x.callers.map((c) => h("tr", {}, td(c.id), td(fmtRate(c.rps), "num"), td(fmtPct(c.errorRate), "num"), td(fmtMs(c.p50Ms), "num"), td(fmtMs(c.p99Ms), "num"), td(c.total, "num"))), { id: "callers" }) : h("p", { class: "muted" }, "No measured traffic into this service yet."),
      h("h2", {}, "Endpoints, by registry"),
      table(["registry", "cluster", "address", "port", "service port", "workload", "health", "labels", "locality", "served"], x.endpoints.map((e) =>
        h("tr", {}, td(e.registry), td(e.cluster), td(e.address), td(e.port), td(e.servicePort), td(e.workload || "–"), td(badge(e.health, e.health === "HEALTHY" ? "ok" : "Warning")),
          td(Object.entries(e.labels).map(([k, v]) => `${k}=${v}`).join(", ")), td(e.locality || "–"), td(e.served ? "yes" : "no"))), { id: "endpoints" }),
      h("h2", {}, "Config that applies, with analysis"),
      table(["kind", "name", "applies", "origin", "analysis", ""], x.configs.map(configBlock), { id: "service-config" }));
  }

  // Proxies --------------------------------------------------------------------------------

  const TYPES = ["CDS", "LDS", "EDS", "RDS", "ECDS"];

  async function proxiesView() {
    const data = await get("/api/proxies");
    show(h("h1", {}, `Proxies (${data.length})`),
      table(["proxy", "workload", "type", "xDS", ...TYPES, "pushes", "stats"], data.map((p) =>
        h("tr", {}, td(h("a", { href: `#/proxy/${encodeURIComponent(p.id)}` }, p.id)), td(p.workload), td(p.type), td(p.variant),
          TYPES.map((t) => td(badge(p.sync[t], p.sync[t]))), td(p.pushes, "num"), td(p.statsError ? h("span", { class: "error-text" }, p.statsError) : "ok"))), { id: "proxies" }));
  }

  function historyChart(events) {
    // One bar per response, newest right: height = time to apply, colour = verdict.
    const list = events.slice(0, 100).reverse();
    const w = 760, hgt = 120, pad = 24;
    const max = Math.max(0.001, ...list.map((e) => e.applySeconds || 0));
    const bw = Math.max(3, Math.min(24, (w - 2 * pad) / Math.max(1, list.length) - 2));
    const colors = { ACK: "#38a169", NACK: "#e53e3e", PENDING: "#dd6b20", SUPERSEDED: "#a0aec0" };
    return s("svg", { class: "history-chart", id: "history-chart", width: w, height: hgt + 30, viewBox: `0 0 ${w} ${hgt + 30}` },
      s("text", { x: pad, y: 14, "font-size": 11, fill: "#718096" }, `time to apply (max ${fmtMs(max * 1000)}), newest right`),
      list.map((e, i) => {
        const bh = e.applySeconds ? Math.max(2, (e.applySeconds / max) * (hgt - 20)) : 4;
        return s("rect", { x: pad + i * (bw + 2), y: hgt - bh + 10, width: bw, height: bh, fill: colors[e.status] || "#a0aec0" },
          s("title", {}, `${e.type} ${e.version} ${e.status}${e.applySeconds !== null ? " in " + fmtMs(e.applySeconds * 1000) : ""}`));
      }),
      s("line", { x1: pad, x2: w - pad, y1: hgt + 10, y2: hgt + 10, stroke: "#cbd5e0" }));
  }

  async function proxyView(id) {
    const p = await get(`/api/proxies/${encodeURIComponent(id)}`);
    const names = (list, more) => list.length ? h("span", { title: list.join("\n") }, truncate(list.slice(0, 3).join(", "), 80) + (more > list.length ? ` … (+${more - list.length})` : "")) : "";
    const clusterRows = (side) => Object.entries(p.clusters[side]).map(([name, t]) =>
      h("tr", {}, td(name), td(fmtRate(t.rps), "num"), td(fmtPct(t.errorRate), "num"), td(fmtMs(t.p50Ms), "num"), td(fmtMs(t.p99Ms), "num"), td(fmtRate(t.cps), "num"), td(t.total, "num")));
    show(
      h("h1", { id: "proxy-title" }, p.workload),
      h("p", { class: "muted" }, `${p.id} · ${p.type} · ${p.variant} · admin ${p.adminAddress || "–"} · connected ${fmtTime(p.connectedAt)} from ${p.peer}`,
        " · ", h("a", { href: hashFor("/graph", { aggregate: "workload", focus: p.workloadId }) }, "show in graph")),
      p.statsError ? h("p", { class: "error-text" }, "stats: " + p.statsError) : null,
      h("h2", {}, "Sync status"),
      table(["type", "status", "since", "version sent", "version acked", "error"], Object.entries(p.sync).map(([t, x]) =>
        h("tr", { "data-type": t }, td(t), td(badge(x.status, x.status)), td(fmtTime(x.since)), td(x.versionSent || "–"), td(x.versionAcked || "–"), td(x.error ? h("span", { class: "error-text" }, x.error) : ""))), { id: "sync" }),
      h("h2", {}, `Push history (${p.history.length} most recent)`),
      p.history.length ? historyChart(p.history) : null,
      table(["sent", "type", "version", "resources", "changed", "removed", "verdict", "apply", "error"], p.history.map((e) =>
        h("tr", { class: "push", "data-status": e.status, "data-type": e.type },
          td(fmtTime(e.sentAt)), td(e.type), td(e.version), td(e.resources, "num"),
          td([e.changed, " ", names(e.changedNames, e.changed)], "num"), td([e.removed, " ", names(e.removedNames, e.removed)], "num"),
          td(badge(e.status, e.status)), td(e.applySeconds === null ? "–" : fmtMs(e.applySeconds * 1000), "num"), td(e.error ? h("span", { class: "error-text" }, e.error) : ""))), { id: "history" }),
      h("h2", {}, "Outbound traffic"),
      table(["cluster", "rps", "errors", "p50", "p99", "conn/s", "total"], clusterRows("outbound"), { id: "outbound" }),
      h("h2", {}, "Inbound traffic"),
      table(["cluster", "rps", "errors", "p50", "p99", "conn/s", "total"], clusterRows("inbound"), { id: "inbound" }));
  }

  // Config ---------------------------------------------------------------------------------

  async function configView(params) {
    const data = await get("/api/config");
    const kinds = [...new Set(data.configs.map((c) => c.kind))].sort();
    const kind = h("select", { id: "kind" }, h("option", { value: "" }, "every kind"), kinds.map((k) => h("option", { value: k }, k)));
    const filter = h("input", { type: "search", placeholder: "filter by name…", id: "filter", value: params.get("q") || "" });
    const onlyMessages = h("input", { type: "checkbox", id: "only-messages" });
    const body = h("tbody", {});
    const render = () => {
      const needle = filter.value.toLowerCase();
      body.replaceChildren(...data.configs.filter((c) => (!kind.value || c.kind === kind.value) &&
        (!needle || `${c.namespace}/${c.name}`.toLowerCase().includes(needle)) &&
        (!onlyMessages.checked || (c.analysis && c.analysis.length))).slice(0, 2000).map(configBlock));
    };
    for (const el of [kind, filter, onlyMessages]) el.addEventListener("input", render);
    render();
    const analysis = data.analysis;
    const unattached = analysis ? analysis.messages.filter((m) => !m.origin) : [];
    show(
      h("h1", {}, `Config (${data.configs.length})`),
      analysis ? cards(Object.entries(analysis.counts).map(([level, n]) => [level, n])) : h("p", { class: "muted" }, "Analysis is turned off."),
      data.errors.length ? [h("h2", {}, `Rejected documents (${data.errors.length})`),
        table(["file", "line", "resource", "field", "message"], data.errors.map((e) => h("tr", {}, td(e.file), td(e.line), td(e.resource), td(e.field), td(e.message))), { id: "rejected" })] : null,
      unattached.length ? [h("h2", {}, "Messages about no single resource"), messageList(unattached)] : null,
      h("div", { class: "toolbar" }, kind, filter, h("label", {}, onlyMessages, " only with messages")),
      h("table", { id: "configs" }, h("thead", {}, h("tr", {}, ["kind", "name", "", "origin", "analysis", ""].map((x) => h("th", {}, x)))), body));
  }

  // Start ------------------------------------------------------------------------------------

  async function dashboards() {
    try {
      const links = await get("/api/dashboards");
      const el = document.getElementById("dashboards");
      el.replaceChildren(...Object.entries(links).map(([name, url]) => h("a", { href: url, target: "_blank", rel: "noopener noreferrer", id: "dashboard-" + name }, name)));
    } catch (error) {
      // The header links are a convenience; the pages work without them.
    }
  }

  window.addEventListener("hashchange", route);
  dashboards();
  route();
})();
