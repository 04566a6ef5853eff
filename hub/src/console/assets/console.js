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
