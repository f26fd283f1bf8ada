// The swarm page: polls the tracker's JSON API every second and redraws the files, the peers and
// the chosen file's chunk map (cells coloured by holders, h0 = none .. h5 = five or more). The
// chosen file is in the URL (#file=NAME), so a link shows it. Names come from the network: they
// are only ever set as text, never as HTML.
"use strict";

const POLL_MS = 1000;
let selected = fromHash();

function fromHash() {
  const m = location.hash.match(/^#file=(.*)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

window.addEventListener("hashchange", () => { selected = fromHash(); refresh(); });

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(unixSecs) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - unixSecs));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function apiPath(name) {
  return "/api/v1/files/" + name.split("/").map(encodeURIComponent).join("/");
}

function drawFiles(page) {
  const body = document.getElementById("files");
  body.replaceChildren(...page.files.map((f) => {
    const tr = el("tr", { class: "file" + (f.name === selected ? " selected" : ""), "data-name": f.name });
    tr.append(el("td", { class: "name" }, f.name), el("td", { class: "num" }, bytes(f.size)),
      el("td", { class: "num" }, f.chunks), el("td", { class: "num" }, f.complete),
      el("td", { class: "num" }, f.partial));
    tr.addEventListener("click", () => { location.hash = "file=" + encodeURIComponent(f.name); });
    return tr;
  }));
  document.getElementById("files-count").textContent = "(" + page.total + ")";
  document.getElementById("files-more").textContent = page.more ? "and " + page.more + " more" : "";
}

function drawPeers(page) {
  const body = document.getElementById("peers");
  body.replaceChildren(...page.peers.map((p) => {
    const tr = el("tr", { class: "peer" });
    tr.append(el("td", {}, p.address), el("td", {}, p.endpoint || "—"), el("td", { class: "num" }, p.files),
      el("td", { title: new Date(p.since * 1000).toISOString() }, ago(p.since)));
    return tr;
  }));
  document.getElementById("peers-count").textContent = "(" + page.total + ")";
  document.getElementById("peers-more").textContent = page.more ? "and " + page.more + " more" : "";
}

function drawMap(map) {
  const box = document.getElementById("map");
  if (!map) {
    box.replaceChildren();
    box.removeAttribute("data-file");
    document.getElementById("map-title").textContent = selected ? "(" + selected + ": not registered)" : "(click a file)";
    document.getElementById("map-summary").textContent = "";
    return;
  }
  const per = map.chunks_per_cell;
  box.replaceChildren(...map.cells.map((holders, i) => {
    const first = i * per, last = Math.min(map.chunks, first + per) - 1;
    const what = per === 1 ? "chunk " + first : "chunks " + first + "–" + last + " (fewest)";
    return el("span", { class: "cell h" + Math.min(holders, 5), "data-holders": holders, title: what + ": " + holders + " holders" });
  }));
  for (const [k, v] of [["file", map.name], ["chunks", map.chunks], ["held", map.held_chunks], ["copies", map.copies]]) {
    box.setAttribute("data-" + k, v);
  }
  document.getElementById("map-title").textContent = "(" + map.name + ")";
  const avg = map.chunks ? (map.copies / map.chunks).toFixed(2) : "0";
  document.getElementById("map-summary").textContent =
    map.chunks + " chunks" + (per > 1 ? ", " + per + " per cell" : "") + "; " + map.held_chunks +
    " held by someone; " + avg + " copies per chunk on average; " + map.complete + " complete and " +
    map.partial + " partial holders";
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [files, peers] = await Promise.all([get("/api/v1/files"), get("/api/v1/peers")]);
    drawFiles(files);
    drawPeers(peers);
    let map = null;
    if (selected) {
      const r = await fetch(apiPath(selected), { cache: "no-store" });
      map = r.ok ? await r.json() : null;
    }
    drawMap(map);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "status";
  } catch (e) {
    status.textContent = "tracker unreachable: " + e.message;
    status.className = "status error";
  }
}

refresh();
setInterval(refresh, POLL_MS);
