// The dashboard's page: reads /api/state every few seconds and draws it.
// Text is set with textContent only, never parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function when(millis) {
  return new Date(millis).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

// Equirectangular, as the coastlines: 2 units per degree.
function place(lat, lon) {
  return [(lon + 180) * 2, (90 - lat) * 2];
}

function drawNodes(nodes) {
  const g = document.getElementById("nodes");
  clear(g);
  const list = document.getElementById("node-list");
  clear(list);
  for (const n of nodes) {
    const [x, y] = place(n.latitude, n.longitude);
    const mark = document.createElementNS(SVG, "g");
    mark.setAttribute("class", "node " + n.state);
    mark.setAttribute("data-node", n.name);
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x);
    dot.setAttribute("cy", y);
    dot.setAttribute("r", 5);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", x + 7);
    label.setAttribute("y", y + 3);
    label.textContent = n.name;
    const title = document.createElementNS(SVG, "title");
    title.textContent = n.name + ": " + n.state;
    mark.append(dot, label, title);
    g.append(mark);

    const li = el("li");
    li.setAttribute("data-node", n.name);
    li.append(el("strong", n.name), " ", el("span", n.state, "state " + n.state));
    if (n.events !== null) li.append(" · " + n.events + " events");
    if (n.problems.length) {
      const ul = el("ul", null, "findings");
      for (const p of n.problems) ul.append(el("li", p));
      li.append(ul);
    }
    list.append(li);
  }
}

function drawEvents(events) {
  const body = document.querySelector("#events tbody");
  clear(body);
  for (const e of events) {
    const tr = el("tr");
    tr.setAttribute("data-kind", e.kind);
    tr.append(
      el("td", e.time.replace("T", " ").slice(0, 19)),
      el("td", e.author),
      el("td", e.kind),
      el("td", e.summary),
      el("td", e.verified ? (e.status === "applied" ? "verified" : "verified, " + e.status) : "NOT VERIFIED"),
    );
    body.append(tr);
  }
}

function drawSites(sites) {
  const box = document.getElementById("sites");
  clear(box);
  if (!sites.length) box.append(el("p", "no site published yet"));
  for (const s of sites) {
    const div = el("div", null, "site");
    div.setAttribute("data-domain", s.domain);
    div.append(el("h3", s.domain));
    const ul = el("ul");
    for (const v of s.history) {
      const li = el("li", null, v.live ? "live" : "");
      li.append(v.id + " · " + when(v.at) + " · " + v.files + (v.message ? " · " + v.message : "") + (v.live ? " · live" : ""));
      ul.append(li);
    }
    div.append(ul);
    box.append(div);
  }
}

function drawCertificates(certs) {
  const body = document.querySelector("#certificates tbody");
  clear(body);
  for (const c of certs) {
    const tr = el("tr");
    const left = c.days_left < 0 ? "expired" : c.days_left < 14 ? "soon" : "";
    tr.append(
      el("td", c.name),
      el("td", c.names.join(", ")),
      el("td", c.issuer),
      el("td", when(c.not_after_millis) + " (" + c.days_left + " days)", left),
    );
    body.append(tr);
  }
}

function drawList(id, items) {
  const ul = document.getElementById(id);
  clear(ul);
  for (const i of items) ul.append(el("li", i));
}

function draw(s) {
  document.getElementById("cluster").textContent = s.cluster || "";
  const status = document.getElementById("status");
  status.textContent = s.status;
  status.className = "status " + s.status;
  document.getElementById("read-at").textContent = "read " + when(s.read_at);
  drawNodes(s.nodes);
  drawList("cluster-findings", s.cluster_findings);
  drawEvents(s.events);
  drawSites(s.sites);
  drawCertificates(s.certificates);
  drawList("errors", s.errors);
}

async function refresh() {
  try {
    const r = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" });
    if (r.ok) draw(await r.json());
    else document.getElementById("status").textContent = "the dashboard answered " + r.status;
  } catch (e) {
    document.getElementById("status").textContent = "the dashboard does not answer";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const every = Number(document.body.dataset.refresh || "5") * 1000;
  refresh();
  setInterval(refresh, every);
});
