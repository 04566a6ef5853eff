// The console's only script: confirms deletes and applies server-sent events. Every piece of
// markup it inserts was rendered and escaped by the hub; the script never builds HTML from data.
"use strict";
(function () {
  document.querySelectorAll("form.confirm").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm("Delete this thing and its shadows?")) e.preventDefault();
    });
  });
  var body = document.body;
  if (!body.dataset.live || !window.EventSource) return;
  var thing = body.dataset.thing;
  var url = "/console/events" + (thing ? "?thing=" + encodeURIComponent(thing) : "");
  var source = new EventSource(url);
  // Marks the page once its stream is open (tests wait for it before acting on the hub).
  source.addEventListener("open", function () { body.dataset.streaming = "1"; });
  function addRow(html) {
    var list = document.getElementById("activity");
    if (!list) return;
    var hint = list.querySelector(".hint");
    if (hint) hint.remove();
    list.insertAdjacentHTML("afterbegin", html);
    while (list.children.length > 100) list.lastElementChild.remove();
  }
  source.addEventListener("presence", function (e) {
    var m = JSON.parse(e.data);
    document.querySelectorAll('[data-conn="' + m.thing + '"]').forEach(function (el) {
      el.textContent = m.connected ? "connected" : "disconnected";
      el.className = "conn " + (m.connected ? "on" : "off");
    });
    if (thing && m.row) addRow(m.row);
  });
  source.addEventListener("activity", function (e) { addRow(e.data); });
  source.addEventListener("shadow", function (e) {
    var holder = document.createElement("div");
    holder.innerHTML = e.data;
    var fresh = holder.firstElementChild;
    if (!fresh) return;
    var old = document.getElementById(fresh.id);
    if (old) {
      old.replaceWith(fresh);
    } else {
      var empty = document.getElementById("no-shadows");
      if (empty) empty.remove();
      document.getElementById("shadows").appendChild(fresh);
    }
    fresh.classList.add("flash");
  });
  source.addEventListener("resync", function () { window.location.reload(); });
})();

// The metrics page: polls /console/metrics/sample and draws each chart as SVG polylines. Rates
// and percentiles are differences between two consecutive samples (the last interval).
(function () {
  var box = document.getElementById("charts");
  if (!box || !window.fetch) return;
  var pollMs = Number(box.dataset.pollMs) || 2000;
  var keep = Number(box.dataset.points) || 60;
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2456c7", "#17803d", "#b42318"];
  var series = { connected: [[]], rate: [[], []], "update-latency": [[], [], []], "method-latency": [[], [], []] };
  var prev = null;
  var samples = 0;

  // The q-quantile (ms) of what was observed between two cumulative bucket snapshots, linear
  // inside its bucket; null when nothing was observed.
  function quantile(h0, h1, q) {
    var n = h1.cumulative.length, total = h1.cumulative[n - 1] - h0.cumulative[n - 1];
    if (total <= 0) return null;
    var target = q * total, before = 0;
    for (var i = 0; i < n; i++) {
      var c = h1.cumulative[i] - h0.cumulative[i];
      if (c >= target) {
        var lo = i === 0 ? 0 : h1.le[i - 1];
        var hi = i < h1.le.length ? h1.le[i] : h1.le[h1.le.length - 1];
        var inBucket = c - before;
        var f = inBucket > 0 ? (target - before) / inBucket : 1;
        return (lo + (hi - lo) * f) * 1000;
      }
      before = c;
    }
    return null;
  }

  function push(name, values) {
    series[name].forEach(function (line, i) {
      line.push(values[i]);
      while (line.length > keep) line.shift();
    });
  }

  function draw(name, digits) {
    var svg = document.getElementById("chart-" + name);
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var lines = series[name], max = 0, held = 2;
    lines.forEach(function (l) {
      if (l.length > held) held = l.length;
      l.forEach(function (v) { if (v !== null && v > max) max = v; });
    });
    if (max <= 0) max = 1;
    var grid = document.createElementNS(NS, "line");
    grid.setAttribute("x1", "0"); grid.setAttribute("x2", "600");
    grid.setAttribute("y1", "155"); grid.setAttribute("y2", "155");
    grid.setAttribute("stroke", "#d9dee7");
    svg.appendChild(grid);
    var label = document.createElementNS(NS, "text");
    label.setAttribute("x", "4"); label.setAttribute("y", "14");
    label.setAttribute("font-size", "12"); label.setAttribute("fill", "#6b7280");
    label.textContent = "max " + max.toFixed(digits);
    svg.appendChild(label);
    var last = [];
    lines.forEach(function (l, i) {
      var pts = [];
      l.forEach(function (v, j) {
        if (v === null) return;
        // Spread over the samples held so far, so a fresh page draws across the whole width.
        var x = (4 + j * 592 / (held - 1)).toFixed(1);
        var y = (155 - (v / max) * 135).toFixed(1);
        pts.push(x + "," + y);
      });
      var pl = document.createElementNS(NS, "polyline");
      pl.setAttribute("points", pts.join(" "));
      pl.setAttribute("fill", "none");
      pl.setAttribute("stroke", COLORS[i % COLORS.length]);
      pl.setAttribute("stroke-width", "2");
      svg.appendChild(pl);
      // A dot on the latest value: a single sample (or one after a gap) draws no line.
      if (pts.length && l.length && l[l.length - 1] !== null) {
        var xy = pts[pts.length - 1].split(",");
        var dot = document.createElementNS(NS, "circle");
        dot.setAttribute("cx", xy[0]); dot.setAttribute("cy", xy[1]); dot.setAttribute("r", "3");
        dot.setAttribute("fill", COLORS[i % COLORS.length]);
        svg.appendChild(dot);
      }
      var v = l.length ? l[l.length - 1] : null;
      last.push(v === null ? "–" : v.toFixed(digits));
    });
    var out = document.getElementById("last-" + name);
    if (out) out.textContent = "now: " + last.join(" / ");
  }

  function tick() {
    fetch("/console/metrics/sample", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected || !r.ok) throw new Error("status " + r.status);
        return r.json();
      })
      .then(function (s) {
        var now = Date.now();
        if (prev) {
          var dt = Math.max((now - prev.at) / 1000, 0.001);
          push("connected", [s.connected_things]);
          push("rate", [
            (s.shadow_updates_accepted_total - prev.s.shadow_updates_accepted_total) / dt,
            (s.mqtt_messages_in_total - prev.s.mqtt_messages_in_total) / dt
          ]);
          push("update-latency", [0.5, 0.9, 0.99].map(function (q) {
            return quantile(prev.s.shadow_update_seconds, s.shadow_update_seconds, q);
          }));
          push("method-latency", [0.5, 0.9, 0.99].map(function (q) {
            return quantile(prev.s.method_round_trip_seconds, s.method_round_trip_seconds, q);
          }));
          draw("connected", 0);
          draw("rate", 1);
          draw("update-latency", 2);
          draw("method-latency", 1);
        }
        prev = { at: now, s: s };
        samples += 1;
        // Tests wait for this before reading the charts.
        box.dataset.samples = String(samples);
      })
      .catch(function () { box.dataset.error = "1"; })
      .then(function () { window.setTimeout(tick, pollMs); });
  }
  tick();
})();
