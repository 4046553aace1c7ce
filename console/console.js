// iotfin operator console. Plain script, no build step, no other origin. The
// admin token goes once to POST /console/api/session and is forgotten; the
// session is an HttpOnly cookie, and the CSRF token lives in this page's memory
// only (never in localStorage, sessionStorage or a cookie script can read).
"use strict";
(function () {
  var POLL_MS = 2000, HISTORY = 60, FEED_MAX = 200, LATEST_MAX = 8;
  var state = {
    csrf: null, page: null, es: null, timer: null,
    last: null, eps: [], depth: [], qdepth: {},
    events: [], paused: false, filter: { type: "", subject: "" }, dlQueue: null,
    arrived: null /* live events that came while the event log was being read */
  };

  function $(id) { return document.getElementById(id); }
  // Builds an element; strings become text nodes, so data is never parsed as HTML.
  function el(tag, attrs) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function toast(msg) {
    var t = $("toast"); t.textContent = msg; t.classList.add("show");
    clearTimeout(toast.h); toast.h = setTimeout(function () { t.classList.remove("show"); }, 3500);
  }
  function age(ms) {
    if (ms === null || ms === undefined) return "–";
    var s = Math.round(ms / 1000);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function when(iso) {
    if (!iso) return "–";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function clock(iso) {
    var d = new Date(iso);
    return isNaN(d) ? String(iso || "") : d.toLocaleTimeString();
  }

  // ---- HTTP ---------------------------------------------------------------------
  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    if (method !== "GET") {
      headers["X-CSRF-Token"] = state.csrf || "";
      if (body !== undefined) headers["Content-Type"] = "application/json";
    }
    return fetch("/console/api/" + path, {
      method: method, headers: headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      if (r.status === 401 && path !== "session") { signedOut("Your console session ended; sign in again."); throw new Error("signed out"); }
      if (r.status === 204) return { status: 204, body: null };
      return r.json().catch(function () { return null; }).then(function (b) {
        if (!r.ok) { var e = new Error((b && (b.detail || b.title)) || ("HTTP " + r.status)); e.status = r.status; throw e; }
        return { status: r.status, body: b };
      });
    });
  }

  // ---- session ------------------------------------------------------------------
  function signedIn(session) {
    state.csrf = session.csrf_token;
    $("page-signin").hidden = true;
    $("nav").hidden = false; $("session").hidden = false;
    startStream(); startPolling();
    route();
  }
  function signedOut(msg) {
    state.csrf = null;
    if (state.es) { state.es.close(); state.es = null; }
    clearInterval(state.timer); state.timer = null;
    $("nav").hidden = true; $("session").hidden = true;
    var pages = document.querySelectorAll(".page");
    for (var i = 0; i < pages.length; i++) pages[i].hidden = true;
    $("page-signin").hidden = false;
    $("signin-error").textContent = msg || "";
    $("token").focus();
  }
  $("signin-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = $("token"), token = input.value;
    input.value = ""; // the token leaves the page with this request and nowhere else
    $("signin-error").textContent = "";
    fetch("/console/api/session", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ token: token })
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (b) {
        if (r.status === 201) { signedIn(b); return; }
        $("signin-error").textContent = r.status === 401 ? "That is not this instance's admin token."
          : r.status === 429 ? "Too many attempts; wait a minute." : ((b && b.detail) || "Sign-in failed.");
        input.focus();
      });
    }).catch(function () { $("signin-error").textContent = "The server did not answer."; });
  });
  $("signout").addEventListener("click", function () {
    api("DELETE", "session").then(function () { signedOut("Signed out."); })
      .catch(function (e) { if (e.message !== "signed out") toast("Sign-out failed: " + e.message); });
  });

  // ---- pages ----------------------------------------------------------------------
  var PAGES = ["overview", "queues", "alarms", "devices", "events", "partners"];
  function route() {
    if (!state.csrf) return;
    var page = (location.hash || "#overview").slice(1).split("/")[0];
    if (PAGES.indexOf(page) < 0) page = "overview";
    var changed = page !== state.page;
    state.page = page;
    for (var i = 0; i < PAGES.length; i++) $("page-" + PAGES[i]).hidden = PAGES[i] !== page;
    var links = document.querySelectorAll("#nav a");
    for (var j = 0; j < links.length; j++) {
      if (links[j].getAttribute("data-page") === page) links[j].setAttribute("aria-current", "page");
      else links[j].removeAttribute("aria-current");
    }
    document.title = $(page + "-h").textContent + " · iotfin console";
    if (changed) $("main").focus({ preventScroll: true });
    refresh();
  }
  window.addEventListener("hashchange", route);
  function refresh() {
    if (state.page === "overview") pollOverview();
    else if (state.page === "queues") loadQueues();
    else if (state.page === "alarms") loadAlarms();
    else if (state.page === "events") loadEvents();
    else if (state.page === "partners") loadPartners();
  }
  function startPolling() {
    clearInterval(state.timer);
    state.timer = setInterval(function () {
      pollOverview(); // keeps the sparklines' history whatever page is shown
      if (state.page === "queues") loadQueues();
      else if (state.page === "alarms") loadAlarms();
      else if (state.page === "partners") loadPartners();
    }, POLL_MS);
  }

  // ---- charts ---------------------------------------------------------------------
  var SVGNS = "http://www.w3.org/2000/svg";
  function sparkline(values, label) {
    var w = 120, h = 30, n = values.length, max = 1;
    for (var i = 0; i < n; i++) if (values[i] > max) max = values[i];
    var svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    if (n < 2) return svg;
    var pts = [];
    for (var k = 0; k < n; k++) {
      var x = (k / (HISTORY - 1)) * w + (HISTORY - n) / (HISTORY - 1) * w;
      var y = h - 2 - (values[k] / max) * (h - 4);
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    var area = document.createElementNS(SVGNS, "polygon");
    area.setAttribute("points", pts.join(" ") + " " + w + "," + h + " " + pts[0].split(",")[0] + "," + h);
    var line = document.createElementNS(SVGNS, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(area); svg.appendChild(line);
    return svg;
  }
  function push(arr, v) { arr.push(v); if (arr.length > HISTORY) arr.shift(); }
  function waiting(q) { return q.ready + q.in_flight + q.delayed; }

  // ---- overview -------------------------------------------------------------------
  function pollOverview() {
    return api("GET", "overview").then(function (r) {
      var o = r.body, eps = null;
      if (state.last && o.now_ms > state.last.now_ms) {
        eps = Math.max(0, (o.event_seq - state.last.event_seq) * 1000 / (o.now_ms - state.last.now_ms));
        push(state.eps, eps);
      }
      state.last = o;
      var total = 0;
      o.queues.forEach(function (q) {
        total += waiting(q);
        if (!state.qdepth[q.name]) state.qdepth[q.name] = [];
        push(state.qdepth[q.name], waiting(q));
      });
      push(state.depth, total);
      var raised = o.alarms.filter(function (a) { return a.state === "alarm"; });
      var pill = $("nav-alarms");
      pill.hidden = raised.length === 0; pill.textContent = raised.length;
      pill.setAttribute("aria-label", raised.length + " alarms raised");
      if (state.page === "overview") renderOverview(o, eps, total, raised);
    }).catch(function (e) { if (e.message !== "signed out") toast("Overview: " + e.message); });
  }
  function renderOverview(o, eps, total, raised) {
    $("ov-eps").textContent = eps === null ? "…" : (eps < 10 ? eps.toFixed(1) : Math.round(eps));
    clear($("ov-eps-spark")).appendChild(sparkline(state.eps, "Events per second over the last two minutes"));
    $("ov-depth").textContent = total;
    clear($("ov-depth-spark")).appendChild(sparkline(state.depth, "Messages waiting over the last two minutes"));
    $("ov-alarms").textContent = raised.length;
    $("ov-alarms-sub").textContent = raised.length ? raised.map(function (a) { return a.name; }).join(", ") : "all clear";
    $("card-alarms").classList.toggle("alarm", raised.length > 0);
    $("ov-online").textContent = o.devices.online;
    $("ov-devices-sub").textContent = "of " + o.devices.total + " known, " + o.devices.active + " active";
    var tb = clear($("ov-queues").tBodies[0]);
    o.queues.forEach(function (q) {
      var tr = el("tr", { cls: q.dead ? "bad" : "" },
        el("th", { scope: "row" }, el("a", { href: "#queues", onclick: function () { state.dlQueue = q.name; } }, q.name)),
        el("td", { cls: "num" }, waiting(q)),
        el("td", { cls: "num" }, q.dead),
        el("td", { cls: "num" }, q.oldest_age_ms ? age(q.oldest_age_ms) : "–"),
        el("td", { cls: "chart" }, sparkline(state.qdepth[q.name] || [], "Depth of " + q.name)));
      tb.appendChild(tr);
    });
  }

  // ---- the live stream ---------------------------------------------------------
  function startStream() {
    if (state.es) state.es.close();
    var es = new EventSource("/console/api/stream"); // the cookie goes with it; resumes with Last-Event-ID
    state.es = es;
    es.onopen = function () { $("live").textContent = "live"; $("live").classList.add("on"); };
    es.onerror = function () {
      $("live").textContent = "reconnecting"; $("live").classList.remove("on");
      // A stream refused for a lost session never recovers by itself: check.
      api("GET", "session").catch(function (e) {
        if (e.status === 401) signedOut("Your console session ended; sign in again.");
      });
    };
    es.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      addLatest(ev);
      if (!state.paused && matches(ev)) {
        addEvent(ev, true);
        if (state.arrived) state.arrived.push(ev); // a reload is on its way: keep it past it
      }
      // What an operator waits for (a dead letter, an alarm, a redrive) shows at
      // once, not at the next poll.
      if (/^(alarm\.|queue\.)/.test(ev.type)) {
        clearTimeout(state.soon);
        state.soon = setTimeout(function () {
          pollOverview();
          if (state.page === "queues") loadQueues();
          else if (state.page === "alarms") loadAlarms();
        }, 150);
      }
    };
  }
  function eventItem(ev, fresh) {
    var li = el("li", { cls: fresh ? "new" : "" },
      el("span", { cls: "t" }, clock(ev.time)),
      el("span", { cls: "ty" }, ev.type),
      el("span", { cls: "su" }, ev.subject));
    li.setAttribute("data-id", ev.id);
    var d = el("details", {}, el("summary", {}, "data"), el("pre", {}, JSON.stringify(ev.data, null, 2)));
    li.appendChild(d);
    return li;
  }
  function addLatest(ev) {
    var ol = $("ov-latest");
    var empty = ol.querySelector(".empty"); if (empty) ol.removeChild(empty);
    var li = el("li", { cls: "new" }, el("span", { cls: "t" }, clock(ev.time)), el("span", { cls: "ty" }, ev.type), el("span", { cls: "su" }, ev.subject));
    li.setAttribute("data-id", ev.id);
    ol.insertBefore(li, ol.firstChild);
    while (ol.children.length > LATEST_MAX) ol.removeChild(ol.lastChild);
  }

  // ---- event log ------------------------------------------------------------------
  function matches(ev) {
    var t = state.filter.type, s = state.filter.subject;
    if (t) {
      if (t.charAt(t.length - 1) === "*") { if (ev.type.indexOf(t.slice(0, -1)) !== 0) return false; }
      else if (ev.type !== t) return false;
    }
    return !s || ev.subject === s;
  }
  function addEvent(ev, fresh) {
    var ol = $("ev-list");
    if (ol.querySelector('[data-id="' + CSS.escape(ev.id) + '"]')) return;
    var empty = ol.querySelector(".empty"); if (empty) ol.removeChild(empty);
    ol.insertBefore(eventItem(ev, fresh), ol.firstChild);
    while (ol.children.length > FEED_MAX) ol.removeChild(ol.lastChild);
  }
  function loadEvents() {
    var q = "events?limit=100";
    if (state.filter.type) q += "&type=" + encodeURIComponent(state.filter.type);
    if (state.filter.subject) q += "&subject=" + encodeURIComponent(state.filter.subject);
    // Live events that come while the page is read may be newer than what it holds:
    // they are put back on top after the list is replaced, not wiped with it.
    var arrived = state.arrived = [];
    return api("GET", q).then(function (r) {
      var ol = clear($("ev-list"));
      var items = r.body.items;
      if (!items.length && !arrived.length) ol.appendChild(el("li", { cls: "empty" }, "No events match."));
      for (var i = items.length - 1; i >= 0; i--) addEvent(items[i], false);
      arrived.forEach(function (ev) { if (matches(ev)) addEvent(ev, true); });
    }).catch(function (e) { if (e.message !== "signed out") toast("Event log: " + e.message); })
      .then(function () { if (state.arrived === arrived) state.arrived = null; });
  }
  $("ev-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    state.filter = { type: $("ev-type").value.trim(), subject: $("ev-subject").value.trim() };
    loadEvents();
  });
  $("ev-pause").addEventListener("click", function () {
    state.paused = !state.paused;
    this.setAttribute("aria-pressed", String(state.paused));
    this.textContent = state.paused ? "Resume" : "Pause";
    if (!state.paused) loadEvents();
  });

  // ---- queues and dead letters -------------------------------------------------
  function loadQueues() {
    return api("GET", "queues").then(function (r) {
      var tb = clear($("q-table").tBodies[0]);
      r.body.items.forEach(function (q) {
        var btn = el("button", { type: "button", cls: q.dead ? "" : "quiet", onclick: function () { state.dlQueue = q.name; loadDeadLetters(); } },
          "Dead letters", el("span", { cls: "sr" }, " of " + q.name));
        tb.appendChild(el("tr", { cls: q.dead ? "bad" : "" },
          el("th", { scope: "row" }, q.name), el("td", { cls: "num" }, q.ready), el("td", { cls: "num" }, q.in_flight),
          el("td", { cls: "num" }, q.delayed), el("td", { cls: "num" }, q.dead),
          el("td", { cls: "num" }, q.oldest_age_ms ? age(q.oldest_age_ms) : "–"), el("td", {}, btn)));
      });
      if (!state.dlQueue) {
        var firstDead = r.body.items.filter(function (q) { return q.dead > 0; })[0];
        if (firstDead) state.dlQueue = firstDead.name;
      }
      if (state.dlQueue) loadDeadLetters();
    }).catch(function (e) { if (e.message !== "signed out") toast("Queues: " + e.message); });
  }
  function loadDeadLetters() {
    var name = state.dlQueue;
    return api("GET", "queues/" + encodeURIComponent(name) + "/dead-letters?limit=50").then(function (r) {
      $("dl").hidden = false;
      $("dl-h").textContent = "Dead letters of " + name;
      var list = clear($("dl-list")), items = r.body.items;
      $("dl-empty").hidden = items.length > 0;
      $("dl-redrive-all").hidden = items.length === 0;
      items.forEach(function (d) {
        var e = d.event || {};
        list.appendChild(el("li", {},
          el("div", { cls: "row" }, el("strong", {}, e.type || "event"), el("span", { cls: "su" }, e.subject || ""),
            el("button", { type: "button", cls: "redrive", onclick: function () { redrive(name, [d.id]); } },
              "Redrive", el("span", { cls: "sr" }, " dead letter " + d.id))),
          el("p", { cls: "err" }, "Last error: " + (d.last_error || "unknown")),
          el("p", { cls: "muted" }, "Dead since " + when(d.dead_at) + " after " + d.receive_count + " receives · event " + (e.id || "")),
          el("details", {}, el("summary", {}, "The failing event"), el("pre", {}, JSON.stringify(e, null, 2)))));
      });
    }).catch(function (e) { if (e.message !== "signed out") toast("Dead letters: " + e.message); });
  }
  function redrive(name, ids) {
    var body = ids ? { ids: ids } : {};
    return api("POST", "queues/" + encodeURIComponent(name) + "/redrive", body).then(function (r) {
      toast("Redriven: " + r.body.redriven + " message" + (r.body.redriven === 1 ? "" : "s") + " back on " + name);
      loadQueues();
    }).catch(function (e) { if (e.message !== "signed out") toast("Redrive failed: " + e.message); });
  }
  $("dl-redrive-all").addEventListener("click", function () { if (state.dlQueue) redrive(state.dlQueue, null); });

  // ---- alarms ---------------------------------------------------------------------
  function loadAlarms() {
    return Promise.all([api("GET", "alarms"), api("GET", "events?limit=50&type=alarm.*")]).then(function (rs) {
      var tb = clear($("al-table").tBodies[0]), items = rs[0].body.items;
      $("al-none").hidden = items.length > 0;
      items.forEach(function (a) {
        tb.appendChild(el("tr", { cls: a.state === "alarm" ? "bad" : "" },
          el("th", { scope: "row" }, a.name), el("td", { cls: "state-" + a.state }, a.state),
          el("td", {}, a.queue || ""), el("td", { cls: "num" }, a.count), el("td", {}, when(a.raised_at))));
      });
      var ol = clear($("al-history")), hist = rs[1].body.items;
      if (!hist.length) ol.appendChild(el("li", { cls: "empty" }, "No alarm has been raised or cleared yet."));
      hist.forEach(function (ev) { ol.appendChild(eventItem(ev, false)); });
    }).catch(function (e) { if (e.message !== "signed out") toast("Alarms: " + e.message); });
  }

  // ---- devices --------------------------------------------------------------------
  function feed(ol, items, render, none) {
    clear(ol);
    if (!items.length) ol.appendChild(el("li", { cls: "empty" }, none));
    items.forEach(function (x) { ol.appendChild(render(x)); });
  }
  $("dev-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var key = $("dev-key").value.trim();
    $("dev-error").textContent = "";
    api("GET", "devices/" + encodeURIComponent(key)).then(function (r) {
      var d = r.body.device, facts = clear($("dev-facts"));
      [["Id", d.id], ["Serial", d.serial], ["Model", d.model], ["Status", d.status],
       ["Online", d.online ? "yes" : "no"], ["Last seen", when(d.last_seen_at)], ["Owner", d.owner_id],
       ["Supplier id", d.external_id], ["Created", when(d.created_at)], ["Activated", when(d.activated_at)]]
        .forEach(function (f) { facts.appendChild(el("dt", {}, f[0])); facts.appendChild(el("dd", {}, f[1] === null || f[1] === undefined ? "–" : String(f[1]))); });
      feed($("dev-events"), r.body.events, function (e) {
        return el("li", {}, el("span", { cls: "t" }, clock(e.time)), el("span", { cls: "ty" }, e.type), el("span", { cls: "su mono" }, JSON.stringify(e.data)));
      }, "No events from this device.");
      feed($("dev-commands"), r.body.commands, function (c) {
        return el("li", {}, el("span", { cls: "t" }, clock(c.created_at)), el("span", { cls: "ty" }, c.type), el("span", { cls: "su" }, c.status));
      }, "No commands sent to this device.");
      feed($("dev-log"), r.body.log, function (e) { return eventItem(e, false); }, "Nothing in the event log.");
      $("dev-result").hidden = false;
    }).catch(function (e) {
      if (e.message === "signed out") return;
      $("dev-result").hidden = true;
      $("dev-error").textContent = e.status === 404 ? "No device has that serial or id." : e.message;
    });
  });

  // ---- partner calls --------------------------------------------------------------
  function loadPartners() {
    var p = $("pc-partner").value;
    return api("GET", "partner-calls" + (p ? "?partner=" + encodeURIComponent(p) : "")).then(function (r) {
      $("pc-off").hidden = true;
      var items = r.body.items.slice(-100).reverse();
      feed($("pc-list"), items, function (c) {
        var li = el("li", {}, el("span", { cls: "t" }, clock(c.received_at)), el("span", { cls: "ty" }, c.partner.toUpperCase() + " " + c.method + " " + c.path));
        li.appendChild(el("details", {}, el("summary", {}, "body"), el("pre", {}, JSON.stringify(c.body, null, 2))));
        return li;
      }, "No partner calls recorded.");
    }).catch(function (e) {
      if (e.message === "signed out") return;
      if (e.status === 404) { $("pc-off").hidden = false; clear($("pc-list")); } else toast("Partner calls: " + e.message);
    });
  }
  $("pc-form").addEventListener("submit", function (ev) { ev.preventDefault(); loadPartners(); });
  $("pc-partner").addEventListener("change", loadPartners);

  // ---- start ----------------------------------------------------------------------
  $("ov-latest").appendChild(el("li", { cls: "empty" }, "Waiting for events…"));
  api("GET", "session").then(function (r) { signedIn(r.body); }).catch(function () { signedOut(""); });
})();
