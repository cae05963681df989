// The Map tab: every point of curation/map.parquet on a canvas, coloured by cluster, label or quality flag; hover
// for a thumbnail, click for "more like this" (the Search tab), drag a box (or hold Shift and draw a lasso) to
// select, then export the selected ids as CSV. Drawn in one pass per frame (100 k points stay smooth); the hover
// looks points up in a grid of 16 px cells, never through all of them.
"use strict";
const MAP_PAD = 12;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"];
const mapState = { data: null, px: null, py: null, grid: null, selected: new Set(), drag: null, hover: -1 };

// where a point of the map ([-1, 1] on both axes, y up) is drawn, in CSS pixels of the canvas
function mapToScreen(x, y, width, height) {
  return [MAP_PAD + (x + 1) / 2 * (width - 2 * MAP_PAD), MAP_PAD + (1 - y) / 2 * (height - 2 * MAP_PAD)];
}

function colourOf(i) {
  const by = document.getElementById("map-colour").value;
  const d = mapState.data;
  if (by === "label" && d.label) return d.label[i] === null ? "#c8ccd2" : PALETTE[hashOf(d.label[i]) % PALETTE.length];
  if (by === "flag" && d.flag) return d.flag[i] ? "#d62728" : "#c8ccd2";
  return PALETTE[d.cluster[i] % PALETTE.length];
}

function hashOf(text) {
  let h = 0;
  for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) >>> 0;
  return h;
}

function drawMap() {
  const canvas = document.getElementById("map-canvas");
  const d = mapState.data;
  if (!d) return;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const n = d.ids.length;
  mapState.px = new Float32Array(n);
  mapState.py = new Float32Array(n);
  const size = n > 20000 ? 2 : 4;
  for (let i = 0; i < n; i++) {
    const [x, y] = mapToScreen(d.x[i], d.y[i], width, height);
    mapState.px[i] = x;
    mapState.py[i] = y;
    ctx.fillStyle = colourOf(i);
    ctx.fillRect(x - size / 2, y - size / 2, size, size);
  }
  ctx.strokeStyle = "#000";
  for (const i of mapState.selected) ctx.strokeRect(mapState.px[i] - 3, mapState.py[i] - 3, 6, 6);
  const drag = mapState.drag;
  if (drag && drag.path.length > 1) {
    ctx.strokeStyle = "#2357c6";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    if (drag.lasso) {
      ctx.moveTo(drag.path[0][0], drag.path[0][1]);
      for (const [x, y] of drag.path) ctx.lineTo(x, y);
      ctx.closePath();
    } else {
      const [a, b] = [drag.path[0], drag.path[drag.path.length - 1]];
      ctx.rect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1]));
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }
  buildGrid(width, height);
}

function buildGrid() {
  const grid = new Map();
  for (let i = 0; i < mapState.px.length; i++) {
    const key = Math.floor(mapState.px[i] / 16) + "," + Math.floor(mapState.py[i] / 16);
    if (!grid.has(key)) grid.set(key, []);
    grid.get(key).push(i);
  }
  mapState.grid = grid;
}

function nearestPoint(x, y) {
  let best = -1, bestD = 64;  // within 8 px
  const cx = Math.floor(x / 16), cy = Math.floor(y / 16);
  for (let gx = cx - 1; gx <= cx + 1; gx++) {
    for (let gy = cy - 1; gy <= cy + 1; gy++) {
      for (const i of mapState.grid.get(gx + "," + gy) || []) {
        const d = (mapState.px[i] - x) ** 2 + (mapState.py[i] - y) ** 2;
        if (d < bestD) { bestD = d; best = i; }
      }
    }
  }
  return best;
}

function inPolygon(x, y, path) {
  let inside = false;
  for (let i = 0, j = path.length - 1; i < path.length; j = i++) {
    const [xi, yi] = path[i], [xj, yj] = path[j];
    if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function finishSelection(drag) {
  const picked = new Set();
  const [a, b] = [drag.path[0], drag.path[drag.path.length - 1]];
  const [x0, x1, y0, y1] = [Math.min(a[0], b[0]), Math.max(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[1], b[1])];
  for (let i = 0; i < mapState.px.length; i++) {
    const x = mapState.px[i], y = mapState.py[i];
    if (drag.lasso ? inPolygon(x, y, drag.path) : (x >= x0 && x <= x1 && y >= y0 && y <= y1)) picked.add(i);
  }
  mapState.selected = picked;
  document.getElementById("map-selected").textContent = `${picked.size} selected`;
  document.getElementById("map-export").disabled = picked.size === 0;
}

function canvasPoint(event) {
  const rect = event.target.getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

async function showMap() {
  if (!mapState.data) {
    const d = await apiJSON("/curation/map");
    mapState.data = d;
    const nmi = d.nmi === null || d.nmi === undefined ? "" : ` · clusters vs labels: NMI ${d.nmi}`;
    document.getElementById("map-info").textContent = `${d.total} images, ${Math.max(...d.cluster) + 1} clusters` +
      (d.shown < d.total ? ` (an even sample of ${d.shown} drawn)` : "") + nmi + (d.note ? ` · ${d.note}` : "");
    document.querySelector('#map-colour option[value="label"]').disabled = !d.label;
    document.querySelector('#map-colour option[value="flag"]').disabled = !d.flag;
  }
  drawMap();
}

function setupMap() {
  const canvas = document.getElementById("map-canvas");
  const tip = document.getElementById("map-tip");
  canvas.addEventListener("mousedown", (e) => {
    mapState.drag = { lasso: e.shiftKey, path: [canvasPoint(e)], moved: false };
  });
  canvas.addEventListener("mousemove", (e) => {
    const [x, y] = canvasPoint(e);
    if (mapState.drag) {
      mapState.drag.path.push([x, y]);
      mapState.drag.moved = true;
      drawMap();
      return;
    }
    if (!mapState.grid) return;
    const i = nearestPoint(x, y);
    if (i === mapState.hover) return;
    mapState.hover = i;
    tip.hidden = i < 0;
    if (i < 0) return;
    const d = mapState.data;
    tip.style.left = `${x + 14}px`;
    tip.style.top = `${y + 14}px`;
    tip.dataset.id = d.ids[i];
    const img = document.createElement("img");
    img.alt = d.ids[i];
    loadThumb(img, d.ids[i]);
    const text = document.createElement("div");
    text.textContent = `${d.ids[i]} · cluster ${d.cluster[i]}` + (d.label && d.label[i] ? ` · ${d.label[i]}` : "") +
      (d.flag && d.flag[i] ? ` · ${d.flag[i]}` : "");
    tip.replaceChildren(img, text);
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; mapState.hover = -1; });
  canvas.addEventListener("mouseup", (e) => {
    const drag = mapState.drag;
    mapState.drag = null;
    if (!drag) return;
    if (drag.moved && drag.path.length > 1) { finishSelection(drag); drawMap(); return; }
    const [x, y] = canvasPoint(e);
    const i = nearestPoint(x, y);
    if (i >= 0) { selectTab("search"); searchById(mapState.data.ids[i]); }  // more like this
  });
  document.getElementById("map-colour").addEventListener("change", drawMap);
  document.getElementById("map-export").addEventListener("click", () =>
    downloadCSV("map-selected.csv", [...mapState.selected].sort((a, b) => a - b).map((i) => mapState.data.ids[i])));
  window.addEventListener("resize", () => { if (!document.getElementById("panel-map").hidden) drawMap(); });
}
setupMap();
