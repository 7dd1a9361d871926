/* The dashboard's only script: draws the progress chart and keeps the page current.
   Everything it shows arrives as JSON and is written with textContent, never as HTML,
   so text that strangers wrote stays text. It keeps only the latest reply of each
   endpoint (the server bounds every list), so a page left open for weeks stays small. */
(function () {
  "use strict";

  var body = document.body;
  var prefix = body.dataset.prefix || "/dashboard";
  var pollMs = Math.max(500, parseInt(body.dataset.pollMs || "5000", 10));
  var MARKS = {
    run: { label: "run", stroke: "#8d8d8d", fill: "#b8b8b8", size: 5 },
    replicate: { label: "replicate of a kept source", stroke: "#2f6db5", fill: "#7fb0e8", size: 6 },
    provisional: { label: "provisional (awaiting replication)", stroke: "#c77800", fill: "#ffffff", size: 8 },
    keep: { label: "kept", stroke: "#14632c", fill: "#2a9d4b", size: 11 }
  };
  var ORDER = ["run", "replicate", "provisional", "keep"];

  function api(path) {
    return fetch(prefix + path, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
      return r.json();
    });
  }

  function when(t) {
    if (t === null || t === undefined) { return ""; }
    return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function bpb(v) { return v === null || v === undefined ? "" : v.toFixed(6); }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }

  function replaceRows(tbody, rows, build, empty) {
    var fresh = document.createDocumentFragment();
    rows.forEach(function (row) { fresh.appendChild(build(row)); });
    if (!rows.length && empty) {
      var tr = document.createElement("tr");
      var td = cell(tr, empty);
      td.colSpan = 7;
      fresh.appendChild(tr);
    }
    tbody.replaceChildren(fresh);
  }

  function status(td, row) {
    var s = document.createElement("span");
    s.className = "status " + row.status;
    s.textContent = row.status;
    td.appendChild(s);
    if (row.provisional) {
      var p = document.createElement("span");
      p.className = "status provisional";
      p.textContent = "provisional";
      td.appendChild(document.createTextNode(" "));
      td.appendChild(p);
    }
  }

  function resultRow(row) {
    var tr = document.createElement("tr");
    cell(tr, when(row.at), "when");
    cell(tr, row.agent);
    status(cell(tr, "", "st"), row);
    cell(tr, bpb(row.val_bpb), "num");
    cell(tr, row.tier);
    cell(tr, row.proposer);
    var td = cell(tr, "", "desc");
    var a = document.createElement("a");
    a.href = prefix + "/result/" + encodeURIComponent(row.key);
    a.textContent = row.description || "(no description)";
    td.appendChild(a);
    return tr;
  }

  function standingRow(s) {
    var tr = document.createElement("tr");
    cell(tr, s.agent);
    cell(tr, String(s.improvements), "num");
    cell(tr, String(s.keeps), "num");
    cell(tr, String(s.runs), "num");
    cell(tr, s.gpu_hours.toFixed(2), "num");
    cell(tr, String(s.confirmations), "num");
    return tr;
  }

  function claimRow(c) {
    var tr = document.createElement("tr");
    cell(tr, c.agent);
    cell(tr, c.track);
    cell(tr, c.sha256.slice(0, 12), "sha");
    cell(tr, when(c.claimed_at), "when");
    cell(tr, when(c.expires_at), "when");
    return tr;
  }

  function deviceRow(d) {
    var tr = document.createElement("tr");
    cell(tr, d.device);
    cell(tr, d.name);
    cell(tr, d.state);
    cell(tr, d.experiment);
    cell(tr, d.time_left_s === null ? "" : Math.round(d.time_left_s) + " s", "num");
    return tr;
  }

  function refreshSummary() {
    var recent = document.getElementById("recent");
    if (!recent) { return Promise.resolve(); }
    return api("/api/summary").then(function (data) {
      replaceRows(recent, data.recent, resultRow, "No results yet.");
      var standings = document.getElementById("standings");
      if (standings) { replaceRows(standings, data.standings, standingRow, "No results yet."); }
      var claims = document.getElementById("claims");
      if (claims) { replaceRows(claims, data.claims, claimRow, "Nothing is being run right now."); }
      var devices = document.getElementById("devices");
      if (devices) { replaceRows(devices, data.devices, deviceRow, ""); }
    });
  }

  /* --- the progress chart ------------------------------------------------------------ */

  function columns(series) {
    var xs = series.t;
    var data = [xs];
    ORDER.forEach(function (mark) {
      data.push(xs.map(function (_, k) { return series.mark[k] === mark ? series.v[k] : null; }));
    });
    var best = [], i = 0, low = null;
    xs.forEach(function (t) {
      while (i < series.best.length && series.best[i][0] <= t) { low = series.best[i][1]; i++; }
      best.push(low);
    });
    data.push(best);
    data.push(xs.map(function () { return series.floor; }));
    return data;
  }

  function labelKeeps(u, series) {
    var ctx = u.ctx;
    ctx.save();
    ctx.font = Math.round(11 * devicePixelRatio) + "px sans-serif";
    ctx.fillStyle = "#14632c";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    series.keeps.forEach(function (keep) {
      var k = keep[0], description = keep[1];
      var x = u.valToPos(series.t[k], "x", true), y = u.valToPos(series.v[k], "y", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) { return; }
      var text = description.length > 48 ? description.slice(0, 47) + "…" : description;
      ctx.save();
      ctx.translate(x + 6 * devicePixelRatio, y - 6 * devicePixelRatio);
      ctx.rotate(-Math.PI / 7);
      ctx.fillText(text, 0, 0);
      ctx.restore();
    });
    ctx.restore();
  }

  function options(el, holder) {
    var pointSeries = ORDER.map(function (mark) {
      var m = MARKS[mark];
      return {
        label: m.label, stroke: m.stroke, fill: m.fill, width: 0,
        paths: function () { return null; },
        points: { show: true, size: m.size, stroke: m.stroke, fill: m.fill, width: 1.5 }
      };
    });
    return {
      width: Math.max(320, el.clientWidth),
      height: 380,
      scales: { x: { time: true } },
      axes: [{}, { label: "val_bpb (lower is better)", size: 70 }],
      legend: { show: true, live: false },
      series: [{ label: "completed" }].concat(pointSeries, [
        { label: "best so far (kept)", stroke: "#2a9d4b", width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
        { label: "floor", stroke: "#b03030", width: 1, dash: [6, 4], points: { show: false } }
      ]),
      hooks: { draw: [function (u) { if (holder.series) { labelKeeps(u, holder.series); } }] }
    };
  }

  function caption(series) {
    var el = document.getElementById("chart-caption");
    if (!el) { return; }
    var n = series.count;
    var text = n + " experiments, " + series.kept + " kept";
    if (series.floor !== null) { text += "; the track's floor is " + bpb(series.floor); }
    el.textContent = text;
  }

  function startChart() {
    var el = document.getElementById("chart");
    if (!el || !window.uPlot) { return null; }
    var holder = { plot: null, series: null };
    var query = "?track=" + encodeURIComponent(el.dataset.track || "") +
      "&tier=" + encodeURIComponent(el.dataset.tier || "");
    function refresh() {
      return api("/api/points" + query).then(function (series) {
        holder.series = series;
        var data = columns(series);
        if (holder.plot === null) {
          holder.plot = new uPlot(options(el, holder), data, el);
        } else {
          holder.plot.setData(data);
        }
        el.dataset.marks = String(series.count);
        el.dataset.kept = String(series.kept);
        caption(series);
      });
    }
    window.addEventListener("resize", function () {
      if (holder.plot) { holder.plot.setSize({ width: Math.max(320, el.clientWidth), height: 380 }); }
    });
    return refresh;
  }

  function loop(tasks) {
    Promise.all(tasks.map(function (task) {
      return task().catch(function (err) { body.dataset.pollError = String(err); });
    })).then(function () {
      body.dataset.polls = String(parseInt(body.dataset.polls || "0", 10) + 1);
      setTimeout(function () { loop(tasks); }, pollMs);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var tasks = [refreshSummary];
    var chart = startChart();
    if (chart) { tasks.push(chart); }
    loop(tasks);
  });
})();
