// Shared by byol-serve's pages: every request goes to this server's own origin, with the API key (kept in
// sessionStorage once entered) as an Authorization header. A 401 shows the key field and a clear message.
"use strict";
const KEY = "byol-api-key";

// the key field and the message line, at the top of every page
document.querySelector("main").insertAdjacentHTML("afterbegin", `
  <div id="keybar" hidden>
    <label>API key <input id="key" type="password" autocomplete="off"></label>
    <button id="keysave">Use key</button>
  </div>
  <div id="message" class="message" hidden></div>`);

function showMessage(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message" + (isError ? " error" : "");
  box.hidden = !text;
}

function askForKey(text) {
  document.getElementById("keybar").hidden = false;
  showMessage(text, true);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", "Bearer " + key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForKey(key ? "The API key was refused: enter a valid key." : "This server needs an API key: enter it to continue.");
    throw new Error("unauthorized");
  }
  return response;
}

async function apiJSON(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    const error = new Error(message);
    error.status = response.status;
    error.code = body.error && body.error.code;
    throw error;
  }
  return body;
}

// thumbnails need the key too, so they are fetched and shown as object URLs (an <img src> sends no header)
async function loadThumb(img, id, route) {
  try {
    // the id in the query string: a path would be normalized by the browser ("." and ".." segments, even
    // percent-encoded), and another image's thumbnail shown
    const response = await api((route || "/thumb") + "?id=" + encodeURIComponent(id));
    if (!response.ok) { img.alt = "no thumbnail (" + response.status + ")"; return; }
    img.src = URL.createObjectURL(await response.blob());
  } catch (err) { img.alt = "no thumbnail"; }
}

function setupKeyBar(onKey) {
  document.getElementById("keysave").addEventListener("click", () => {
    const value = document.getElementById("key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    document.getElementById("keybar").hidden = true;
    showMessage("", false);
    onKey();
  });
}

// a cell that a spreadsheet would read as a formula (=, +, -, @, a tab or a carriage return first) is
// prefixed with a single quote, so an id chosen by whoever named the files cannot run in the reader's spreadsheet
function csvCell(value) {
  const text = /^[=+\-@\t\r]/.test(value) ? "'" + value : value;
  return '"' + text.replaceAll('"', '""') + '"';
}

function downloadCSV(name, ids) {
  download(name, new Blob(["id\n" + ids.map(csvCell).join("\n") + "\n"], { type: "text/csv" }));
}

function download(name, blob) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
}

async function showModel() {
  const info = await apiJSON("/info");
  const search = info.search ? ` · index: ${info.search.count} images, layer ${info.search.layer}` +
    (info.search.regions ? `, regions of ${info.search.regions.layer}` : "") : "";
  document.getElementById("model").textContent =
    `${info.model} · ${info.architecture} · ${info.backend}${info.demo ? " · DEMO MODEL" : ""}${search}`;
  return info;
}
