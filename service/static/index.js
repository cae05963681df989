"use strict";
async function landing() {
  try {
    const info = await showModel();
    const card = await apiJSON("/ui/card");
    document.getElementById("summary").textContent = card.summary || "(the model folder has no card)";
    const rows = Object.entries(info.dims.gap).map(([layer, dim]) =>
      `<tr><td>${layer}</td><td>${dim}</td><td>${info.dims.mhead[layer] || ""}</td></tr>`);
    document.getElementById("layers").innerHTML =
      "<tr><th>layer</th><th>gap dims</th><th>mhead dims</th></tr>" + rows.join("");
  } catch (err) {
    if (err.message !== "unauthorized") showMessage("Could not load the model: " + err.message, true);
  }
}
setupKeyBar(landing);
landing();
