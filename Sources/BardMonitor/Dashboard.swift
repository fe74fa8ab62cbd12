/// The dashboard: one self-contained page (no CDN, no external files) that polls /api/status and /curve.svg
/// every second and redraws in place.
let dashboardHTML = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Bard</title>
<style>
  body { font-family: sans-serif; margin: 1.2em 2em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .6em; }
  .tiles { display: flex; flex-wrap: wrap; gap: .6em; margin-bottom: 1em; }
  .tile { border: 1px solid #ddd; border-radius: 6px; padding: .4em .8em; min-width: 7.5em; }
  .tile b { display: block; font-size: 1.25em; }
  .tile span { color: #666; font-size: .8em; }
  table { border-collapse: collapse; margin: .5em 0 1em; }
  th, td { border-bottom: 1px solid #eee; padding: .25em .9em; text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .late { color: #c00; font-weight: bold; }
  pre { background: #f7f7f7; padding: .8em; white-space: pre-wrap; max-width: 60em; }
  #state { color: #888; font-size: .85em; }
</style>
</head>
<body>
<h1 id="title">Bard</h1>
<div class="tiles">
  <div class="tile"><span>step</span><b id="step">-</b></div>
  <div class="tile"><span>epoch</span><b id="epoch">-</b></div>
  <div class="tile"><span>train loss</span><b id="train">-</b></div>
  <div class="tile"><span>validation loss</span><b id="val">-</b></div>
  <div class="tile"><span>chars/s</span><b id="speed">-</b></div>
  <div class="tile"><span>workers</span><b id="alive">-</b></div>
  <div class="tile"><span>evictions</span><b id="evictions">-</b></div>
  <div class="tile"><span>rejected messages</span><b id="rejected">-</b></div>
  <div class="tile"><span>step time (ms): compute / comm / reduce / update</span><b id="phases">-</b></div>
</div>
<div id="curve"></div>
<h2>Workers</h2>
<table id="workers">
  <thead><tr><th>worker</th><th>columns</th><th>steps computed</th><th>last heard</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Latest sample</h2>
<pre id="sample">(after the first epoch)</pre>
<div id="state">connecting…</div>
<script>
"use strict";
function text(id, v) { document.getElementById(id).textContent = v; }
function fixed(x, n) { return (x === null || x === undefined) ? "-" : x.toFixed(n); }
async function refresh() {
  try {
    const s = await (await fetch("/api/status", { cache: "no-store" })).json();
    text("title", s.title);
    text("step", s.step + " / " + s.totalSteps);
    text("epoch", s.epoch);
    text("train", fixed(s.trainLoss, 4));
    text("val", fixed(s.valLoss, 4));
    text("speed", s.charsPerSecond ? Math.round(s.charsPerSecond).toLocaleString() : "-");
    text("alive", s.workers.length);
    text("evictions", s.evictions + (s.redone ? " (" + s.redone + " steps redone)" : ""));
    text("rejected", s.rejected);
    const p = s.stepSeconds, ms = k => p[k] === undefined ? "-" : Math.round(p[k] * 1000);
    text("phases", [ms("compute"), ms("communication"), ms("reduce"), ms("update")].join(" / "));
    const body = document.querySelector("#workers tbody");
    body.replaceChildren(...s.workers.map(w => {
      const tr = document.createElement("tr");
      const cells = [w.name, w.columns, w.steps, w.secondsSinceHeard.toFixed(1) + " s ago"];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.textContent = c;
        if (i >= 2) td.className = "num";
        if (i === 3 && w.secondsSinceHeard > 2) td.classList.add("late");
        tr.appendChild(td);
      });
      return tr;
    }));
    if (s.sample) text("sample", s.sample);
    const svg = await (await fetch("/curve.svg", { cache: "no-store" })).text();
    document.getElementById("curve").innerHTML = svg;
    text("state", "updated " + new Date().toLocaleTimeString());
  } catch (e) {
    text("state", "no answer from the coordinator (" + e + "); retrying");
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""#
