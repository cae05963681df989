"use strict";
async function landing() {
  try {
    const info = await showModel();
    const card = await apiJSON("/ui/card");
    document.getElementById("summary").textContent = card.summary || "(the model folder has no card)";
    // built from nodes and text, never markup: nothing the server sends is parsed as HTML
    const table = document.getElementById("layers");
    const row = (cells, tag) => {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement(tag);
        td.textContent = cell;
        tr.appendChild(td);
      }
      return tr;
    };
    table.replaceChildren(row(["layer", "gap dims", "mhead dims"], "th"),
      ...Object.entries(info.dims.gap).map(([layer, dim]) => row([layer, String(dim), String(info.dims.mhead[layer] || "")], "td")));
  } catch (err) {
    if (err.message !== "unauthorized") showMessage("Could not load the model: " + err.message, true);
  }
}
setupKeyBar(landing);
landing();
