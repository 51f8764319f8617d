// loopml dashboard: fetches /v1/dashboard and draws every section.
// The charts are drawn by the small SVG renderer below (no library, no CDN: the page must work offline).
// Every drawn data element carries data-mark ("line", "point", "bar", "ref") so tests can count them;
// a chart without data says so (data-empty="true"). All text goes through textContent, never innerHTML.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563"];
  const REF_COLORS = ["#6b7280", "#b45309", "#0f766e", "#7c3aed"];
  const W = 640, H = 270, M = { l: 62, r: 16, t: 14, b: 46 };
  const REFRESH_MS = 30000;
  const TIME_STEPS = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3,
    3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 604800e3, 2592000e3,
  ];

  function html(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function svg(tag, attrs, parent, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function isNum(v) {
    return typeof v === "number" && isFinite(v);
  }

  function pad(n, width) {
    return String(n).padStart(width || 2, "0");
  }

  function fmtNum(v) {
    if (!isNum(v)) return "–";
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e7)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  // times are the log's naive timestamps sent as milliseconds: shown as they are (UTC fields), never shifted
  function fmtTime(ms, span) {
    const d = new Date(ms);
    const date = d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
    const hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    if (span >= 4 * 86400e3) return date;
    if (span >= 86400e3) return pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + hm;
    if (span >= 600e3) return hm;
    if (span >= 10e3) return hm + ":" + pad(d.getUTCSeconds());
    return pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + "." + pad(d.getUTCMilliseconds(), 3);
  }

  function fmtCell(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Array.isArray(v)) return v.length ? v.map(fmtCell).join(", ") : "–";
    if (typeof v === "number") return fmtNum(v);
    const text = String(v);
    if (/^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(text)) return text.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$/, " UTC");
    return text;
  }

  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    const mag = Math.pow(10, Math.floor(Math.log10(span / count)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => span / st <= count) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function timeTicks(lo, hi, count) {
    const step = TIME_STEPS.find((st) => (hi - lo) / st <= count) || Math.ceil((hi - lo) / count);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  }

  function finitePoints(series) {
    return (series.points || []).filter((p) => isNum(p[1]));
  }

  // -- charts ---------------------------------------------------------------------------------------

  function renderChart(spec) {
    const fig = html("figure", { "data-figure": spec.id });
    html("h3", {}, fig, spec.title);
    const root = svg("svg", {
      class: "chart",
      viewBox: "0 0 " + W + " " + H,
      role: "img",
      "aria-label": spec.title,
      "data-chart": spec.id,
      "data-kind": spec.kind,
    }, fig);
    const px0 = M.l, px1 = W - M.r, py0 = H - M.b, py1 = M.t;
    svg("text", { class: "axis-label", x: (px0 + px1) / 2, y: H - 6, "text-anchor": "middle" }, root, spec.x_label);
    svg("text", {
      class: "axis-label", x: 14, y: (py0 + py1) / 2, "text-anchor": "middle",
      transform: "rotate(-90 14 " + (py0 + py1) / 2 + ")",
    }, root, spec.y_label);
    const series = spec.series || [];
    const lines = (spec.lines || []).filter((l) => isNum(l.y));
    const data = series.map(finitePoints);
    if (!data.some((pts) => pts.length)) {
      root.setAttribute("data-empty", "true");
      svg("rect", { x: px0, y: py1, width: px1 - px0, height: py0 - py1, fill: "#fafbfc", stroke: "#d9dde5" }, root);
      svg("text", { class: "empty", x: (px0 + px1) / 2, y: (py0 + py1) / 2 - 6, "text-anchor": "middle" }, root, "no data yet");
      svg("text", { x: (px0 + px1) / 2, y: (py0 + py1) / 2 + 14, "text-anchor": "middle" }, root, spec.empty || "");
      return fig;
    }
    root.setAttribute("data-empty", "false");

    // y scale: always from 0 (or below), up to the largest value or reference line
    let ylo = 0, yhi = 0;
    data.forEach((pts) => pts.forEach((p) => { ylo = Math.min(ylo, p[1]); yhi = Math.max(yhi, p[1]); }));
    lines.forEach((l) => { if (l.fit !== false) { ylo = Math.min(ylo, l.y); yhi = Math.max(yhi, l.y); } });
    if (yhi === ylo) yhi = ylo + 1;
    yhi += (yhi - ylo) * 0.08;
    const shown = (l) => l.y >= ylo && l.y <= yhi;
    const sy = (v) => py0 - ((v - ylo) / (yhi - ylo)) * (py0 - py1);

    // x scale: categories (bands) or time/numbers (linear)
    const category = spec.x_type === "category";
    let sx, xticks, xlabel, band = 0, barPx = 0;
    if (category) {
      const names = [];
      series.forEach((se) => (se.points || []).forEach((p) => { if (!names.includes(p[0])) names.push(p[0]); }));
      band = (px1 - px0) / names.length;
      sx = (name) => px0 + band * (names.indexOf(name) + 0.5);
      xticks = names;
      xlabel = (name) => String(name);
    } else {
      const barW = spec.kind === "bar" ? spec.bar_width || 0 : 0;
      let xlo = Infinity, xhi = -Infinity;
      data.forEach((pts) => pts.forEach((p) => { xlo = Math.min(xlo, p[0]); xhi = Math.max(xhi, p[0]); }));
      xhi += barW;
      if (xhi === xlo) { xlo -= 1000; xhi += 1000; }
      const inner = 8;
      sx = (v) => px0 + inner + ((v - xlo) / (xhi - xlo)) * (px1 - px0 - 2 * inner);
      const timeAxis = spec.x_type === "time";
      xticks = timeAxis ? timeTicks(xlo, xhi, 6) : niceTicks(xlo, xhi, 6);
      xlabel = timeAxis ? (v) => fmtTime(v, xhi - xlo) : fmtNum;
      barPx = barW ? Math.max(1, sx(xlo + barW) - sx(xlo) - 1) : 0;
    }

    // grid and axes
    const grid = svg("g", { class: "grid" }, root);
    niceTicks(ylo, yhi, 5).forEach((v) => {
      if (v < ylo || v > yhi) return;
      svg("line", { x1: px0, x2: px1, y1: sy(v), y2: sy(v), stroke: "#eceef2" }, grid);
      svg("text", { x: px0 - 6, y: sy(v) + 4, "text-anchor": "end" }, grid, fmtNum(v));
    });
    svg("line", { x1: px0, x2: px1, y1: py0, y2: py0, stroke: "#98a2b3" }, root);
    svg("line", { x1: px0, x2: px0, y1: py0, y2: py1, stroke: "#98a2b3" }, root);
    xticks.forEach((v) => {
      const x = sx(v);
      if (x < px0 - 1 || x > px1 + 1) return;
      svg("line", { x1: x, x2: x, y1: py0, y2: py0 + 4, stroke: "#98a2b3" }, root);
      const anchor = x > px1 - 40 ? "end" : x < px0 + 40 ? "start" : "middle";
      svg("text", { x: x, y: py0 + 16, "text-anchor": anchor }, root, xlabel(v));
    });

    // data
    const marks = svg("g", { class: "marks" }, root);
    series.forEach((se, i) => {
      const color = COLORS[i % COLORS.length];
      if (spec.kind === "bar") {
        (se.points || []).forEach((p) => {
          if (!isNum(p[1])) return;
          const width = category ? band * 0.6 : barPx;
          const x = category ? sx(p[0]) - width / 2 : sx(p[0]);
          const y = sy(Math.max(p[1], 0)), y0 = sy(Math.min(p[1], 0));
          const bar = svg("rect", {
            x: x, y: y, width: width, height: Math.max(y0 - y, p[1] === 0 ? 0 : 1), fill: color,
            "data-mark": "bar", "data-series": se.name, "data-x": p[0], "data-y": p[1],
          }, marks);
          svg("title", {}, bar, (category ? p[0] : fmtTime(p[0], 0)) + ": " + fmtNum(p[1]));
          if (category) svg("text", { x: x + width / 2, y: y - 4, "text-anchor": "middle" }, marks, fmtNum(p[1]));
        });
        return;
      }
      let d = "", pen = false;
      (se.points || []).forEach((p) => {
        if (!isNum(p[1])) { pen = false; return; }
        d += (pen ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1);
        pen = true;
      });
      svg("path", {
        d: d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": se.style === "dotted" ? "2 4" : "none",
        "data-mark": "line", "data-series": se.name,
      }, marks);
      (se.points || []).forEach((p) => {
        if (!isNum(p[1])) return;
        const dot = svg("circle", {
          cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 3, fill: color,
          "data-mark": "point", "data-series": se.name, "data-x": p[0], "data-y": p[1],
        }, marks);
        svg("title", {}, dot, se.name + " · " + (category ? p[0] : fmtTime(p[0], 0)) + ": " + fmtNum(p[1]));
      });
    });
    lines.forEach((l, i) => {
      const color = REF_COLORS[i % REF_COLORS.length];
      if (!shown(l)) return;
      svg("line", {
        x1: px0, x2: px1, y1: sy(l.y), y2: sy(l.y), stroke: color, "stroke-width": 1.5, "stroke-dasharray": "6 4",
        "data-mark": "ref", "data-y": l.y,
      }, root);
      svg("text", { x: px1 - 4, y: sy(l.y) - 4, "text-anchor": "end", fill: color }, root, l.name);
    });

    // legend
    if (series.length > 1 || lines.length) {
      const legend = html("div", { class: "legend" }, fig);
      series.forEach((se, i) => html("span", { style: "--c: " + COLORS[i % COLORS.length] }, legend, se.name));
      lines.forEach((l, i) => html(
        "span", { class: "ref", style: "--c: " + REF_COLORS[i % REF_COLORS.length] }, legend,
        l.name + (shown(l) ? "" : l.y > yhi ? " (above the chart)" : " (below the chart)"),
      ));
    }
    return fig;
  }

  // -- tables, sections, page -------------------------------------------------------------------------

  function renderTable(spec) {
    const box = html("div", { class: "table" });
    html("h3", {}, box, spec.title);
    const t = html("table", { id: spec.id, "data-table": spec.id }, box);
    const head = html("tr", {}, html("thead", {}, t));
    spec.columns.forEach((c) => html("th", {}, head, c));
    const body = html("tbody", {}, t);
    if (!spec.rows.length) {
      html("td", { colspan: spec.columns.length, class: "none" }, html("tr", { "data-empty": "true" }, body), spec.empty);
    }
    spec.rows.forEach((row) => {
      const tr = html("tr", { "data-row": "" }, body);
      if (row.includes("critical")) tr.className = "critical";
      else if (row.includes("drift")) tr.className = "drift";
      row.forEach((v) => html("td", typeof v === "number" ? { class: "num" } : {}, tr, fmtCell(v)));
    });
    return box;
  }

  function renderSection(sec) {
    const box = html("section", { id: "sec-" + sec.id, "data-section": sec.id });
    html("h2", {}, box, sec.title);
    if (sec.error) {
      html("p", { class: "error", "data-error": "" }, box, "Could not load this section: " + sec.error);
      return box;
    }
    if (sec.summary && sec.summary.length) {
      const dl = html("dl", { class: "summary" }, box);
      sec.summary.forEach((pair) => {
        const item = html("div", {}, dl);
        html("dt", {}, item, pair[0]);
        html("dd", {}, item, fmtCell(pair[1]));
      });
    }
    if (sec.note) html("p", { class: "note" }, box, sec.note);
    if (sec.charts && sec.charts.length) {
      const charts = html("div", { class: "charts" }, box);
      sec.charts.forEach((c) => {
        try {
          charts.appendChild(renderChart(c));
        } catch (err) {
          html("p", { class: "error", "data-error": "" }, charts, "Could not draw " + c.title + ": " + err.message);
        }
      });
    }
    (sec.tables || []).forEach((t) => box.appendChild(renderTable(t)));
    return box;
  }

  function render(data) {
    document.getElementById("title").textContent = "loopml · " + (data.project || "");
    document.title = "loopml · " + (data.project || "") + " dashboard";
    const main = document.getElementById("sections");
    const fresh = document.createDocumentFragment();
    (data.sections || []).forEach((sec) => fresh.appendChild(renderSection(sec)));
    main.replaceChildren(fresh);
  }

  async function load() {
    const status = document.getElementById("status");
    try {
      const response = await fetch("/v1/dashboard", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status + " " + (await response.text()).slice(0, 200));
      const data = await response.json();
      render(data);
      status.textContent = "updated " + fmtCell(data.generated_at) + " (server time) · computed in " + data.seconds
        + " s · refreshes every " + REFRESH_MS / 1000 + " s";
      document.body.setAttribute("data-loaded", "true");
    } catch (err) {
      status.textContent = "could not load /v1/dashboard: " + err.message;
      document.body.setAttribute("data-loaded", "error");
    }
  }

  load();
  setInterval(load, REFRESH_MS);
})();
