"""The /reports page: charts of liability over time and of daily volumes, drawn in the browser.

The page is static and holds no data. Its script takes a bearer token from the URL fragment
(`/reports#token=...`, which browsers never send to a server) or from the form, then fetches
the JSON reports with an Authorization header and draws them as SVG. Nothing is loaded from
elsewhere: the machines this runs on may have no internet, and a finance page should not
depend on a CDN. The Content-Security-Policy admits exactly this page's own script and style.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1a202c; }
h1 { font-size: 1.5rem; margin-bottom: 0.5rem; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 0.25rem; }
form { display: flex; flex-wrap: wrap; gap: 0.75rem; align-items: end; }
label { display: flex; flex-direction: column; font-size: 0.85rem; }
input, select, button { font: inherit; padding: 0.25rem 0.4rem; }
.note { color: #4a5568; font-size: 0.85rem; margin: 0 0 0.5rem; }
#status { min-height: 1.4em; }
#status.error { color: #c53030; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { padding: 0.2rem 0.75rem; border-bottom: 1px solid #e2e8f0; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
svg { display: block; margin: 0.5rem 0 1rem; max-width: 100%; height: auto; }
svg text { font-size: 11px; fill: #4a5568; }
svg .title { font-size: 13px; fill: #1a202c; font-weight: 600; }
"""

SCRIPT = r"""
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 760, HEIGHT = 260, LEFT = 90, RIGHT = 20, TOP = 28, BOTTOM = 40;
  const KINDS = [
    ["sold_minor", "sold", "Sold", "#2b6cb0"],
    ["loaded_minor", "loaded", "Loaded", "#38a169"],
    ["redeemed_minor", "redeemed", "Redeemed", "#dd6b20"],
    ["refunded_minor", "refunded", "Refunded", "#805ad5"],
    ["expired_minor", "expired", "Expired", "#718096"],
  ];
  const LINE_COLOURS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280"];
  const byId = (id) => document.getElementById(id);
  let token = "";
  let lastDaily = null;

  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    token = params.get("token") || "";
    for (const name of ["from", "to"]) {
      if (params.get(name)) byId(name).value = params.get(name);
    }
    if (params.has("token")) {
      // Keep the token out of the address bar and the history once it has been read.
      params.delete("token");
      const rest = params.toString();
      const here = location.pathname + location.search;
      history.replaceState(null, "", here + (rest ? "#" + rest : ""));
    }
  }

  function status(text, isError) {
    const el = byId("status");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(path.split("?")[0] + ": " + (body.detail || response.status));
    }
    return body;
  }

  function major(minor, digits) {
    const unit = Math.pow(10, digits);
    const size = Math.abs(minor);
    const whole = Math.floor(size / unit).toLocaleString("en");
    const fraction = digits ? "." + String(size % unit).padStart(digits, "0") : "";
    return (minor < 0 ? "-" : "") + whole + fraction;
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const factor of [1, 2, 2.5, 5, 10]) {
      if (factor * step >= value) return factor * step;
    }
    return 10 * step;
  }

  function frame(kind, currency, title, days, top, digits) {
    const svg = el("svg", {
      viewBox: "0 0 " + WIDTH + " " + HEIGHT, width: WIDTH, height: HEIGHT, role: "img",
      "data-chart": kind, "data-currency": currency, "aria-label": title,
    });
    svg.appendChild(el("text", { x: LEFT, y: 16, class: "title" }, title));
    const plotHeight = HEIGHT - TOP - BOTTOM;
    for (const share of [0, 0.5, 1]) {
      const y = TOP + plotHeight * (1 - share);
      svg.appendChild(el("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y, y2: y, stroke: "#e2e8f0" }));
      svg.appendChild(el("text", { x: LEFT - 6, y: y + 4, "text-anchor": "end" },
        major(Math.round(top * share), digits)));
    }
    const every = Math.max(1, Math.ceil(days.length / 8));
    days.forEach((day, i) => {
      if (i % every === 0 || i === days.length - 1) {
        svg.appendChild(el("text", { x: xOf(i, days.length), y: HEIGHT - BOTTOM + 16,
          "text-anchor": "middle" }, day.slice(5)));
      }
    });
    return svg;
  }

  function xOf(index, count) {
    const plotWidth = WIDTH - LEFT - RIGHT;
    return LEFT + plotWidth * (index + 0.5) / count;
  }

  function yOf(value, top) {
    const plotHeight = HEIGHT - TOP - BOTTOM;
    return TOP + plotHeight * (1 - value / top);
  }

  function drawLiability(series) {
    const box = byId("liability");
    box.replaceChildren();
    const currencies = [...new Set(series.points.map((p) => p.currency))];
    if (!currencies.length) {
      box.textContent = "No card liability in this period.";
      return;
    }
    currencies.forEach((currency, n) => {
      const points = series.points.filter((p) => p.currency === currency);
      const days = points.map((p) => p.day);
      const digits = series.minor_digits[currency];
      const top = niceMax(Math.max(...points.map((p) => p.balance_minor)));
      const last = points[points.length - 1];
      const title = "Liability in " + currency + ": " + major(last.balance_minor, digits) +
        " at the end of " + last.day;
      const svg = frame("liability", currency, title, days, top, digits);
      const colour = LINE_COLOURS[n % LINE_COLOURS.length];
      const coords = points.map((p, i) => xOf(i, points.length) + "," + yOf(p.balance_minor, top));
      svg.appendChild(el("polyline", { points: coords.join(" "), fill: "none", stroke: colour,
        "stroke-width": 2, "data-series": currency }));
      points.forEach((p, i) => {
        const dot = el("circle", { cx: xOf(i, points.length), cy: yOf(p.balance_minor, top), r: 3,
          fill: colour, "data-day": p.day, "data-currency": currency,
          "data-amount-minor": p.balance_minor });
        const label = p.day + ": " + currency + " " + major(p.balance_minor, digits);
        dot.appendChild(el("title", {}, label));
        svg.appendChild(dot);
      });
      box.appendChild(svg);
    });
  }

  function dailyTotals(daily, location) {
    // Per currency, per day: the sums over the chosen location (or all of them).
    const totals = new Map();
    for (const row of daily.rows) {
      if (location && row.location_code !== location) continue;
      if (!totals.has(row.currency)) totals.set(row.currency, new Map());
      const days = totals.get(row.currency);
      const sums = days.get(row.day) || Object.fromEntries(KINDS.map((k) => [k[0], 0]));
      for (const [field] of KINDS) sums[field] += row[field];
      days.set(row.day, sums);
    }
    return totals;
  }

  function drawDaily(daily) {
    lastDaily = daily;
    const picker = byId("location");
    const chosen = picker.value;
    const locations = [...new Set(daily.rows.map((r) => r.location_code).filter((c) => c))].sort();
    const options = locations.map((c) => new Option(c, c));
    picker.replaceChildren(new Option("All locations", ""), ...options);
    picker.value = locations.includes(chosen) ? chosen : "";
    const box = byId("daily");
    box.replaceChildren();
    const totals = dailyTotals(daily, picker.value);
    if (!totals.size) {
      box.textContent = "No money moved in this period.";
      return;
    }
    const days = daily.days;
    for (const [currency, perDay] of [...totals.entries()].sort()) {
      const digits = daily.minor_digits[currency];
      let peak = 0;
      for (const sums of perDay.values()) for (const [f] of KINDS) peak = Math.max(peak, sums[f]);
      const top = niceMax(peak);
      const where = picker.value || "all locations";
      const svg = frame("daily", currency, "Daily volumes in " + currency + ", " + where,
        days, top, digits);
      const slot = (WIDTH - LEFT - RIGHT) / days.length;
      const barWidth = Math.max(1, (slot * 0.8) / KINDS.length);
      days.forEach((day, i) => {
        const sums = perDay.get(day);
        if (!sums) return;
        KINDS.forEach(([field, kind, label, colour], k) => {
          const value = sums[field];
          if (!value) return;
          const x = LEFT + slot * i + slot * 0.1 + barWidth * k;
          const y = yOf(value, top);
          const bar = el("rect", { x: x, y: y, width: barWidth, height: HEIGHT - BOTTOM - y,
            fill: colour, "data-day": day, "data-kind": kind, "data-currency": currency,
            "data-amount-minor": value });
          const text = day + " " + label + ": " + currency + " " + major(value, digits);
          bar.appendChild(el("title", {}, text));
          svg.appendChild(bar);
        });
      });
      KINDS.forEach(([, , label, colour], k) => {
        const x = LEFT + k * 110;
        svg.appendChild(el("rect", { x: x, y: HEIGHT - 14, width: 10, height: 10, fill: colour }));
        svg.appendChild(el("text", { x: x + 14, y: HEIGHT - 5 }, label));
      });
      box.appendChild(svg);
    }
  }

  function drawLiabilityTable(report) {
    const body = byId("liability-now").querySelector("tbody");
    body.replaceChildren();
    for (const line of report.lines) {
      const row = body.insertRow();
      row.setAttribute("data-currency", line.currency);
      row.setAttribute("data-card-type", line.card_type);
      row.setAttribute("data-amount-minor", line.balance_minor);
      for (const text of [line.currency, line.card_type,
                          major(line.balance_minor, report.minor_digits[line.currency]),
                          String(line.cards_with_balance)]) {
        row.insertCell().textContent = text;
      }
    }
    byId("as-of").textContent = report.as_of;
  }

  async function show(event) {
    if (event) event.preventDefault();
    token = byId("token").value.trim() || token;
    if (!token) {
      status("Enter a bearer token of a client with the finance:export scope.", true);
      return;
    }
    byId("token").value = "";
    const period = new URLSearchParams();
    for (const name of ["from", "to"]) if (byId(name).value) period.set(name, byId(name).value);
    const query = period.toString() ? "?" + period.toString() : "";
    status("Loading\u2026", false);
    try {
      const [series, daily, now] = await Promise.all([
        getJSON("/v1/reports/liability/series" + query),
        getJSON("/v1/reports/daily" + query),
        getJSON("/v1/reports/liability"),
      ]);
      byId("from").value = series.from;
      byId("to").value = series.to;
      drawLiability(series);
      drawDaily(daily);
      drawLiabilityTable(now);
      document.body.setAttribute("data-loaded", "true");
      status("From " + series.from + " to " + series.to + " (UTC days).", false);
    } catch (error) {
      document.body.setAttribute("data-loaded", "error");
      status(error.message, true);
    }
  }

  byId("controls").addEventListener("submit", show);
  byId("location").addEventListener("change", () => { if (lastDaily) drawDaily(lastDaily); });
  readFragment();
  if (token) show();
  else status("Enter a bearer token of a client with the finance:export scope.", false);
})();
"""

PAGE_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>giftledger reports</title>
<style>{STYLE}</style>
</head>
<body>
<h1>giftledger reports</h1>
<form id="controls">
  <label>Bearer token <input id="token" type="password" autocomplete="off"
    placeholder="finance:export token"></label>
  <label>From <input id="from" type="date"></label>
  <label>To <input id="to" type="date"></label>
  <label>Location <select id="location"><option value="">All locations</option></select></label>
  <button type="submit">Show</button>
</form>
<p id="status" role="status"></p>
<h2>Liability now</h2>
<p class="note">What the cards hold, as of <span id="as-of">now</span>.</p>
<table id="liability-now">
  <thead><tr><th>Currency</th><th>Card type</th><th>Balance</th><th>Cards with balance</th></tr>
  </thead>
  <tbody></tbody>
</table>
<h2>Liability over time</h2>
<p class="note">What the cards held at the end of each UTC day, per currency.</p>
<div id="liability"></div>
<h2>Daily volumes</h2>
<p class="note">Sold, loaded, redeemed (with captured holds), refunded and expired per UTC day.</p>
<div id="daily"></div>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# Only this page's own script and style run, it talks only to this server, and no other site
# may frame it.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)};"
    " connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
