"use strict";
const PAGE = { duplicates: 10, outliers: 50, leaks: 50, shared_parts: 50 };
const state = { dupOffset: 0, outOffset: 0, leakOffset: 0, sharedOffset: 0, stale: {},
  selected: { duplicates: new Set(), outliers: new Set(), leaks: new Set(), shared_parts: new Set() } };

function card(id, score, onClick) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.id = id;
  const img = document.createElement("img");
  img.alt = id;
  loadThumb(img, id);
  const name = document.createElement("div");
  name.className = "id";
  name.textContent = id;
  div.append(img, name);
  if (score !== undefined && score !== null) {
    const s = document.createElement("div");
    s.className = "score";
    s.textContent = Number(score).toFixed(4);
    div.append(s);
  }
  if (onClick) div.addEventListener("click", onClick);
  return div;
}

// a box [x0, y0, x1, y1] in an image of size [w, h], drawn over the element showing it (in percent: any scale)
function placeBox(div, box, size) {
  div.style.left = (100 * box[0] / size[0]) + "%";
  div.style.top = (100 * box[1] / size[1]) + "%";
  div.style.width = (100 * (box[2] - box[0]) / size[0]) + "%";
  div.style.height = (100 * (box[3] - box[1]) / size[1]) + "%";
  div.hidden = false;
}

// a region hit: its thumbnail with the box that matched (the thumbnail keeps the image's aspect ratio)
function regionCard(r) {
  const div = card(r.id, r.score, () => searchById(r.id));
  const img = div.querySelector("img");
  const wrap = document.createElement("div");
  wrap.className = "boxed";
  const box = document.createElement("div");
  box.className = "box hit-box";
  box.dataset.box = r.box.join(",");
  img.replaceWith(wrap);
  wrap.append(img, box);
  img.style.height = "auto";
  img.addEventListener("load", () => placeBox(box, r.box, r.size));
  return div;
}

function showResults(body, what) {
  const grid = document.getElementById("results");
  const make = body.regions ? regionCard : (r) => card(r.id, r.score, () => searchById(r.id));
  grid.replaceChildren(...body.results.map(make));
  document.getElementById("query-info").textContent = `${body.results.length} results for ${what}` +
    (body.regions ? ` (inside images, box ${body.query_box.map((v) => Math.round(v)).join(",")})` : "");
}

// search inside images: the query is shown, a box dragged on it names the part (in the image's own pixels)
const query = { file: null, box: null };

function showQuery(file) {
  query.file = file;
  query.box = null;
  const img = document.getElementById("query-img");
  img.src = URL.createObjectURL(file);
  document.getElementById("query-box").hidden = true;
  document.getElementById("query-view").hidden = !document.getElementById("regions").checked;
}

function setupBoxDrag() {
  const area = document.getElementById("query-boxed");
  const img = document.getElementById("query-img");
  const shown = document.getElementById("query-box");
  let from = null;
  const at = (e) => {
    const r = img.getBoundingClientRect();
    return [Math.min(Math.max(e.clientX - r.left, 0), r.width), Math.min(Math.max(e.clientY - r.top, 0), r.height)];
  };
  const current = (e) => { const p = at(e); return [Math.min(from[0], p[0]), Math.min(from[1], p[1]), Math.max(from[0], p[0]), Math.max(from[1], p[1])]; };
  area.addEventListener("pointerdown", (e) => { e.preventDefault(); from = at(e); area.setPointerCapture(e.pointerId); });
  area.addEventListener("pointermove", (e) => {
    if (!from) return;
    const r = img.getBoundingClientRect();
    placeBox(shown, current(e), [r.width, r.height]);
  });
  area.addEventListener("pointerup", (e) => {
    if (!from) return;
    const b = current(e);
    from = null;
    const r = img.getBoundingClientRect();
    if (b[2] - b[0] < 4 || b[3] - b[1] < 4) { shown.hidden = true; query.box = null; }
    else {
      const sx = img.naturalWidth / r.width, sy = img.naturalHeight / r.height;
      query.box = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy].map((v) => Math.round(v));
    }
    if (query.file) searchFile(query.file);
  });
}

function k() { return document.getElementById("k").value; }

async function searchFile(file) {
  const form = new FormData();
  form.append("image", file);
  const inside = document.getElementById("regions").checked;
  const options = inside ? "&regions=true" + (query.box ? "&box=" + query.box.join(",") : "") : "";
  try {
    showResults(await apiJSON("/search?k=" + k() + options, { method: "POST", body: form }), file.name);
    showMessage("", false);
  } catch (err) { if (err.message !== "unauthorized") showMessage("Search failed: " + err.message, true); }
}

async function searchById(id) {
  document.getElementById("qid").value = id;
  try {
    showResults(await apiJSON("/search?k=" + k(), { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id }) }), "more like " + id);
    showMessage("", false);
  } catch (err) { if (err.message !== "unauthorized") showMessage("Search failed: " + err.message, true); }
}

function checkbox(tab, id) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = state.selected[tab].has(id);
  box.dataset.id = id;
  box.addEventListener("click", (e) => e.stopPropagation());
  box.addEventListener("change", () => box.checked ? state.selected[tab].add(id) : state.selected[tab].delete(id));
  return box;
}

async function showDuplicates() {
  const body = await apiJSON(`/curation/duplicates?offset=${state.dupOffset}&limit=${PAGE.duplicates}`);
  const groups = body.groups.map((g) => {
    const div = document.createElement("div");
    div.className = "group";
    div.dataset.group = g.group;
    const title = document.createElement("div");
    const listed = g.members.length < g.size ? ` (the first ${g.members.length} shown)` : "";
    title.textContent = `group ${g.group}: ${g.size} images${listed}, keeping ${g.kept ?? g.representative}`;
    const members = document.createElement("div");
    members.className = "members";
    for (const m of g.members) {
      const c = card(m.id, m.similarity);
      const kept = m.id === (g.kept ?? g.representative);
      if (kept) c.classList.add("kept");
      const label = document.createElement("label");
      label.append(checkbox("duplicates", m.id), ` ${m.kind}${kept ? " · kept" : m.remove ? " · to remove" : ""}`);
      c.append(label);
      members.append(c);
    }
    div.append(title, members);
    return div;
  });
  document.getElementById("groups").replaceChildren(...groups);
  showPager("dup", state.dupOffset, body.groups.length, body.total, "groups ",
    body.keep ? ` · kept by --keep ${body.keep}` : "");
}

async function showOutliers() {
  const body = await apiJSON(`/curation/outliers?offset=${state.outOffset}&limit=${PAGE.outliers}`);
  const rows = body.rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    const cells = [checkbox("outliers", r.id), r.rank ?? "", null, r.id,
      r.score === null ? "" : Number(r.score).toFixed(4), r.percentile === null ? "" : Number(r.percentile).toFixed(1),
      r.kind + (r.error ? ": " + r.error : "")];
    for (const value of cells) {
      const td = document.createElement("td");
      if (value === null) {
        if (r.kind === "embedded") { const img = document.createElement("img"); img.alt = r.id; loadThumb(img, r.id); td.append(img); }
      } else if (value instanceof Node) td.append(value); else td.textContent = value;
      tr.append(td);
    }
    return tr;
  });
  document.getElementById("outlier-rows").replaceChildren(...rows);
  showPager("out", state.outOffset, body.rows.length, body.total);
}

function thumbCell(id, route) {
  const td = document.createElement("td");
  const img = document.createElement("img");
  img.alt = id;
  loadThumb(img, id, route);
  td.append(img);
  return td;
}

async function showLeaks() {
  const body = await apiJSON(`/curation/leaks?offset=${state.leakOffset}&limit=${PAGE.leaks}`);
  document.getElementById("leak-info").textContent =
    `${body.total} images of this set are copies of images in ${body.other} (cosine >= ${body.threshold}, or the same bytes)`;
  const rows = body.rows.map((r) => pairRow("leaks", r.id, [thumbCell(r.id), thumbCell(r.id, "/curation/leaks/thumb")],
    [r.id, r.id_a, Number(r.similarity).toFixed(4), r.kind]));
  document.getElementById("leak-rows").replaceChildren(...rows);
  showPager("leak", state.leakOffset, body.rows.length, body.total);
}

// a row of a pair of images: its checkbox, the two images' cells, then one text cell per value
function pairRow(tab, id, images, values) {
  const tr = document.createElement("tr");
  tr.dataset.id = id;
  const box = document.createElement("td");
  box.append(checkbox(tab, id));
  tr.append(box, ...images);
  for (const value of values) {
    const td = document.createElement("td");
    td.textContent = value;
    tr.append(td);
  }
  return tr;
}

// a tab's pager: "<before>first-last of total<after>", previous and next enabled where there is a page
function showPager(prefix, offset, shown, total, before = "", after = "") {
  const last = Math.min(total, offset + shown);
  document.getElementById(prefix + "-page").textContent = `${before}${offset + 1}-${last} of ${total}${after}`;
  document.getElementById(prefix + "-prev").disabled = offset === 0;
  document.getElementById(prefix + "-next").disabled = last >= total;
}

// a thumbnail with a box drawn over it (the box in the image's pixels, size its width and height)
function boxedThumbCell(id, box, size) {
  const td = document.createElement("td");
  const wrap = document.createElement("div");
  wrap.className = "boxed";
  const img = document.createElement("img");
  img.alt = id;
  const mark = document.createElement("div");
  mark.className = "box pair-box";
  mark.dataset.box = box.join(",");
  mark.hidden = true;
  wrap.append(img, mark);
  td.append(wrap);
  if (size) img.addEventListener("load", () => placeBox(mark, box, size));
  loadThumb(img, id);
  return td;
}

async function showShared() {
  const body = await apiJSON(`/curation/shared_parts?offset=${state.sharedOffset}&limit=${PAGE.shared_parts}`);
  document.getElementById("shared-info").textContent =
    `${body.total} pairs of images share a part (regions at cosine >= ${body.threshold}; near-duplicates as wholes left to Duplicates)`;
  const rows = body.rows.map((r) => pairRow("shared_parts", r.id,
    [boxedThumbCell(r.id, r.box, r.size), boxedThumbCell(r.id_b, r.box_b, r.size_b)],
    [r.id, r.id_b, Number(r.similarity).toFixed(4), Number(r.whole).toFixed(3)]));
  document.getElementById("shared-rows").replaceChildren(...rows);
  showPager("shared", state.sharedOffset, body.rows.length, body.total);
}

function showStale(name) {
  const banner = document.getElementById("stale");
  const message = state.stale[name];
  banner.hidden = !message;
  banner.textContent = message ? `Stale: these ${name} were ${message}.` : "";
}

function selectTab(name) {
  for (const button of document.querySelectorAll("nav.tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== "panel-" + name;
  showStale(name);
  const load = { duplicates: showDuplicates, outliers: showOutliers, leaks: showLeaks, map: () => showMap(),
    shared_parts: showShared }[name];
  if (load) load().catch((err) => { if (err.message !== "unauthorized") showMessage(err.message, true); });
}

async function start() {
  try {
    const info = await showModel();
    document.getElementById("regions-toggle").hidden = !(info.search && info.search.regions);
    const curation = await apiJSON("/curation");
    document.querySelector('[data-tab="duplicates"]').hidden = !curation.duplicates;
    document.querySelector('[data-tab="outliers"]').hidden = !curation.outliers;
    document.querySelector('[data-tab="leaks"]').hidden = !curation.leaks;
    document.querySelector('[data-tab="map"]').hidden = !curation.map;
    document.querySelector('[data-tab="shared_parts"]').hidden = !curation.shared_parts;
    state.stale = curation.stale || {};
    for (const name of Object.keys(state.stale)) {
      document.querySelector(`[data-tab="${name}"]`).textContent += " (stale)";
    }
    showMessage("", false);
  } catch (err) {
    if (err.message !== "unauthorized") showMessage("Could not load: " + err.message, true);
  }
}

for (const button of document.querySelectorAll("nav.tabs button")) {
  button.addEventListener("click", () => selectTab(button.dataset.tab));
}
function searchNew(file) { showQuery(file); searchFile(file); }
document.getElementById("file").addEventListener("change", (e) => { if (e.target.files[0]) searchNew(e.target.files[0]); });
document.getElementById("regions").addEventListener("change", (e) => {
  document.getElementById("query-view").hidden = !e.target.checked || !query.file;
  if (query.file) searchFile(query.file);
});
setupBoxDrag();
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) searchNew(e.dataTransfer.files[0]);
});
document.getElementById("byid").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = document.getElementById("qid").value.trim();
  if (id) searchById(id);
});
document.getElementById("dup-prev").addEventListener("click", () => { state.dupOffset = Math.max(0, state.dupOffset - PAGE.duplicates); showDuplicates(); });
document.getElementById("dup-next").addEventListener("click", () => { state.dupOffset += PAGE.duplicates; showDuplicates(); });
document.getElementById("out-prev").addEventListener("click", () => { state.outOffset = Math.max(0, state.outOffset - PAGE.outliers); showOutliers(); });
document.getElementById("out-next").addEventListener("click", () => { state.outOffset += PAGE.outliers; showOutliers(); });
document.getElementById("leak-prev").addEventListener("click", () => { state.leakOffset = Math.max(0, state.leakOffset - PAGE.leaks); showLeaks(); });
document.getElementById("leak-next").addEventListener("click", () => { state.leakOffset += PAGE.leaks; showLeaks(); });
document.getElementById("shared-prev").addEventListener("click", () => { state.sharedOffset = Math.max(0, state.sharedOffset - PAGE.shared_parts); showShared(); });
document.getElementById("shared-next").addEventListener("click", () => { state.sharedOffset += PAGE.shared_parts; showShared(); });
document.getElementById("shared-export").addEventListener("click", () => downloadCSV("shared-parts-selected.csv", [...state.selected.shared_parts]));
document.getElementById("leak-export").addEventListener("click", () => downloadCSV("leaks-selected.csv", [...state.selected.leaks]));
document.getElementById("dup-export").addEventListener("click", () => downloadCSV("duplicates-selected.csv", [...state.selected.duplicates]));
document.getElementById("dup-remove").addEventListener("click", async () => {
  try {
    const response = await api("/curation/duplicates/remove");
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error?.message || response.statusText);
    download("remove.txt", await response.blob());
  } catch (err) { if (err.message !== "unauthorized") showMessage("Could not export: " + err.message, true); }
});
document.getElementById("out-export").addEventListener("click", () => downloadCSV("outliers-selected.csv", [...state.selected.outliers]));
setupKeyBar(start);
start();
