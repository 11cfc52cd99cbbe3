/* Ops dashboard: live data over the staff-only websocket (a snapshot, then one update a
 * second with only what is new), drawn with uPlot (vendored in static/ops/uplot). When
 * the socket cannot open or drops, the page polls the JSON feed (the same snapshot) and
 * tries the socket again with a growing delay; a 4003 close (not staff) stops both.
 * Every chart container gets data-points (how many x values it draws) and #live gets
 * data-transport / data-ws-messages / data-polls, so a browser test can tell what drew
 * what. Strings from the server are only ever set as textContent. */
(function () {
  "use strict";
  var root = document.getElementById("live");
  if (!root || typeof uPlot === "undefined") { return; }
  var feedUrl = root.getAttribute("data-feed-url");
  var wsPath = root.getAttribute("data-ws-path");
  var pollMs = parseInt(root.getAttribute("data-poll-ms"), 10) || 3000;
  var statusEl = document.getElementById("live-status");
  var CLOSE_FORBIDDEN = 4003;
  var charts = {};  // id -> {plot, signature}
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }

  function ago(epoch, now) {
    var s = Math.max(0, Math.round(now - epoch));
    if (s < 90) { return s + " s ago"; }
    if (s < 5400) { return Math.round(s / 60) + " min ago"; }
    return Math.round(s / 3600) + " h ago";
  }

  /* Several series with their own x values -> one x axis (union) with nulls for gaps. */
  function align(seriesList) {
    var xs = {};
    seriesList.forEach(function (s) { s.t.forEach(function (t) { xs[t] = true; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var data = [x];
    seriesList.forEach(function (s) {
      var at = {};
      s.t.forEach(function (t, i) { at[t] = s.v[i]; });
      data.push(x.map(function (t) { return at[t] === undefined ? null : at[t]; }));
    });
    return data;
  }

  function draw(id, labels, data, opts) {
    var box = document.getElementById(id);
    if (!box) { return; }
    var signature = labels.join("|");
    var entry = charts[id];
    if (!entry || entry.signature !== signature) {
      if (entry) { entry.plot.destroy(); }
      var series = [{}].concat(labels.map(function (label, i) {
        return { label: label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
                 paths: opts && opts.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined };
      }));
      var plot = new uPlot({
        width: Math.max(300, box.clientWidth || 460), height: 200, series: series,
        scales: { x: { time: true } }, legend: { live: false },
        // Room for prices and fund balances (uPlot's default axis is sized for short numbers).
        axes: [{}, { size: 80, values: function (u, splits) {
          return splits.map(function (v) { return v === null ? "" : v.toLocaleString(undefined, { maximumFractionDigits: 4 }); });
        } }],
      }, data, box);
      entry = charts[id] = { plot: plot, signature: signature };
    } else {
      entry.plot.setData(data);
    }
    box.setAttribute("data-points", String(data[0].length));
  }

  function drawRates(feed) {
    var list = [], labels = [];
    feed.symbols.forEach(function (symbol) {
      var m = feed.matcher[symbol];
      if (!m) { return; }
      list.push({ t: m.t, v: m.orders_per_s }); labels.push(symbol + " orders/s");
      list.push({ t: m.t, v: m.trades_per_s }); labels.push(symbol + " trades/s");
    });
    draw("chart-rates", labels, align(list));
    var lat = [], latLabels = [];
    feed.symbols.forEach(function (symbol) {
      var m = feed.matcher[symbol];
      if (m) { lat.push({ t: m.t, v: m.batch_p95_ms }); latLabels.push(symbol + " batch p95 ms"); }
    });
    draw("chart-latency", latLabels, align(lat));
  }

  function drawPrices(feed) {
    var holder = document.getElementById("price-charts");
    feed.symbols.forEach(function (symbol) {
      var id = "chart-price-" + symbol;
      if (!document.getElementById(id)) {
        var panel = el("div", null, "panel");
        panel.appendChild(el("h3", symbol));
        var box = el("div", null, "chart");
        box.id = id;
        box.setAttribute("data-symbol", symbol);
        panel.appendChild(box);
        holder.appendChild(panel);
      }
      var p = feed.prices[symbol] || { t: [], mark: [], index: [] };
      draw(id, ["mark", "index"], [p.t, p.mark, p.index]);
    });
  }

  function drawFund(feed) {
    var f = feed.insurance_fund;
    document.getElementById("fund-asset").textContent = f.asset;
    draw("chart-fund", ["balance"], [f.t, f.balance], { stepped: true });
  }

  function fillSla(feed) {
    var body = document.querySelector("#sla-table tbody");
    body.replaceChildren();
    Object.keys(feed.latency).forEach(function (op) {
      var row = feed.latency[op], tr = el("tr");
      tr.appendChild(el("td", op));
      var cell = el("td", row.p95_us === null ? "no data" : row.p95_us + " µs", row.violated ? "bad" : "");
      tr.appendChild(cell);
      tr.appendChild(el("td", row.sla_us + " µs"));
      body.appendChild(tr);
    });
  }

  function fillHealth(feed) {
    var body = document.querySelector("#health-table tbody");
    body.replaceChildren();
    var checks = feed.health.checks;
    function row(name, check, detail) {
      var tr = el("tr");
      tr.setAttribute("data-check", name);
      tr.appendChild(el("td", name));
      tr.appendChild(el("td", check.ok ? "yes" : "NO", check.ok ? "good" : "bad"));
      tr.appendChild(el("td", detail));
      body.appendChild(tr);
    }
    function age(check) {
      if (check.error) { return check.error; }
      return check.age_seconds === undefined || check.age_seconds === null ? "" : "heartbeat " + check.age_seconds + " s ago";
    }
    row("database", checks.database, checks.database.error || "");
    row("redis", checks.redis, checks.redis.error || "");
    row("beat + worker", checks.beat, age(checks.beat) + (checks.beat.leader_pid ? " (beat pid " + checks.beat.leader_pid + ")" : ""));
    var symbols = (checks.matchers && checks.matchers.symbols) || {};
    Object.keys(symbols).forEach(function (symbol) {
      var m = symbols[symbol];
      row("matcher " + symbol, m, age(m) + (m.leader_pid ? " (pid " + m.leader_pid + ")" : ""));
    });
    row("pricefeed", checks.pricefeed, age(checks.pricefeed) + (checks.pricefeed.leader_pid ? " (pid " + checks.pricefeed.leader_pid + ")" : "") +
        (checks.pricefeed.required ? "" : " (not required)"));
  }

  function fillAlerts(feed) {
    var body = document.querySelector("#alerts-table tbody");
    body.replaceChildren();
    if (!feed.alerts.length) {
      var tr = el("tr"), td = el("td", "No alert.");
      td.colSpan = 5; tr.appendChild(td); body.appendChild(tr);
    }
    feed.alerts.forEach(function (a) {
      var tr = el("tr", null, a.status === "RESOLVED" ? "resolved" : "");
      tr.setAttribute("data-alert-id", a.id);
      tr.appendChild(el("td", a.level, "level-" + a.level));
      tr.appendChild(el("td", a.status + (a.acknowledged ? " (ack)" : "")));
      tr.appendChild(el("td", a.message));
      tr.appendChild(el("td", ago(a.since, feed.at)));
      tr.appendChild(el("td", a.count + "×"));
      body.appendChild(tr);
    });
  }

  /* Latency p95 per operation over time: kept here, one point per snapshot/update. */
  var latencyHistory = {};
  function recordLatency(feed) {
    Object.keys(feed.latency).forEach(function (op) {
      var at = feed.latency_at || feed.at;  // updates carry latency every few seconds
      var h = latencyHistory[op] || (latencyHistory[op] = { t: [], v: [] });
      if (h.t.length && h.t[h.t.length - 1] >= at) { return; }
      h.t.push(at); h.v.push(feed.latency[op].p95_us);
      trim(h, ["v"], at - (feed.window_seconds || 600));
    });
  }

  function drawSla() {
    var ops = Object.keys(latencyHistory);
    draw("chart-sla", ops.map(function (op) { return op + " p95 µs"; }),
         align(ops.map(function (op) { return latencyHistory[op]; })));
  }

  function fillLiquidations(feed) {
    var body = document.querySelector("#liquidations-table tbody");
    if (!body) { return; }
    body.replaceChildren();
    if (!feed.liquidations.length) {
      var tr = el("tr"), td = el("td", "No liquidation.");
      td.colSpan = 6; tr.appendChild(td); body.appendChild(tr);
    }
    feed.liquidations.forEach(function (l) {
      var tr = el("tr", null, l.status === "DONE" ? "resolved" : "");
      tr.setAttribute("data-liquidation-id", l.id);
      tr.appendChild(el("td", "#" + l.id));
      tr.appendChild(el("td", l.user));
      tr.appendChild(el("td", l.scope));
      tr.appendChild(el("td", l.status, l.status === "ACTIVE" ? "bad" : ""));
      tr.appendChild(el("td", l.ratio));
      tr.appendChild(el("td", ago(l.started_at, feed.at)));
      body.appendChild(tr);
    });
  }

  function render(feed) {
    recordLatency(feed);
    drawRates(feed); drawPrices(feed); drawFund(feed); drawSla();
    fillSla(feed); fillHealth(feed); fillAlerts(feed); fillLiquidations(feed);
  }

  /* -- merging an update into the state ------------------------------------------ */

  /* Drop points older than `since` from s.t and the parallel arrays named in keys. */
  function trim(s, keys, since) {
    var n = 0;
    while (n < s.t.length && s.t[n] < since) { n += 1; }
    if (!n) { return; }
    s.t = s.t.slice(n);
    keys.forEach(function (k) { s[k] = s[k].slice(n); });
  }

  function appendPoints(target, add, keys, since) {
    target.t = target.t.concat(add.t);
    keys.forEach(function (k) { target[k] = target[k].concat(add[k]); });
    trim(target, keys, since);
  }

  var MATCHER_KEYS = ["orders_per_s", "trades_per_s", "batch_p95_ms"];
  function merge(feed, update) {
    var since = update.at - feed.window_seconds;
    feed.symbols.forEach(function (symbol) {
      if (update.matcher[symbol]) { appendPoints(feed.matcher[symbol], update.matcher[symbol], MATCHER_KEYS, since); }
      else { trim(feed.matcher[symbol], MATCHER_KEYS, since); }
      if (update.prices[symbol]) { appendPoints(feed.prices[symbol], update.prices[symbol], ["mark", "index"], since); }
      else { trim(feed.prices[symbol], ["mark", "index"], since); }
    });
    // The fund's last point is "now": it is replaced by the update's entries and new "now".
    var fund = feed.insurance_fund;
    fund.t.pop(); fund.balance.pop();
    appendPoints(fund, update.insurance_fund, ["balance"], -Infinity);
    fund.current = update.insurance_fund.current;
    ["latency", "order_latency_p95_us", "alerts", "liquidations", "health"].forEach(function (k) {
      if (update[k] !== undefined) { feed[k] = update[k]; }
    });
    if (update.latency !== undefined) { feed.latency_at = update.at; }
    feed.at = update.at;
  }

  /* -- transports ------------------------------------------------------------------ */

  var state = null, transport = "none", wsMessages = 0, polls = 0;
  var pollTimer = null, socket = null, retryMs = 2000, refused = false;

  function showStatus(feed) {
    statusEl.textContent = (feed.health.ready ? "ready" : "NOT READY") + " · " + transport + " · updated " +
      new Date(feed.at * 1000).toLocaleTimeString();
    statusEl.className = feed.health.ready ? "good" : "bad";
  }

  function setTransport(name) {
    transport = name;
    root.setAttribute("data-transport", name);
  }

  function poll() {
    pollTimer = null;
    fetch(feedUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (feed) {
        if (transport !== "polling") { return; }  // the socket came back meanwhile
        state = feed;
        render(state);
        polls += 1;
        root.setAttribute("data-polls", String(polls));
        showStatus(state);
      })
      .catch(function (err) { statusEl.textContent = "feed unavailable: " + err.message; statusEl.className = "bad"; })
      .then(function () { if (transport === "polling" && !pollTimer) { pollTimer = setTimeout(poll, pollMs); } });
  }

  function startPolling() {
    if (transport === "polling" || refused) { return; }
    setTransport("polling");
    poll();
  }

  function stopPolling() {
    if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
  }

  function connect() {
    if (!wsPath || typeof WebSocket === "undefined") { startPolling(); return; }
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + wsPath;
    try { socket = new WebSocket(url); } catch (e) { startPolling(); return; }
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type === "snapshot") {
        state = message;
        state.latency_at = message.at;
        retryMs = 2000;
        stopPolling();
        setTransport("websocket");
      } else if (message.type === "update" && state) {
        merge(state, message);
      } else { return; }
      wsMessages += 1;
      root.setAttribute("data-ws-messages", String(wsMessages));
      render(state);
      showStatus(state);
    };
    socket.onclose = function (event) {
      socket = null;
      if (event.code === CLOSE_FORBIDDEN) {
        refused = true;
        stopPolling();
        setTransport("refused");
        statusEl.textContent = "refused: staff only (sign in again)";
        statusEl.className = "bad";
        return;
      }
      startPolling();
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 60000);
    };
  }
  connect();
}());
