// tally's operations dashboard: polls /api/live and /api/status every second and redraws.
// No build step and nothing from outside: uPlot is served by tally itself.
//
// /api/live is fetched whole (the last hour) on load and once a minute; in between only its
// last 3 minutes, which replace what the page holds for them (late events within the live
// grace period can still change the newest minutes). Amounts are summed exactly, as BigInt
// minor units: never as floats.
"use strict";

const HOUR = 60, TAIL = 3, TOP = 5, POLL_MS = 1000;
const COLORS = ["#e6edf3", "#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#ff7b72", "#39c5cf"];
const rows = new Map();        // "ws|partner|currency" -> row
let polls = 0, firing = new Map(), charts = {}, chartKey = "";

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
const pct = (e, n) => (n > 0 ? (100 * e / n).toFixed(2) + "%" : "–");

function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  for (const c of children) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return n;
}

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function merge(list, whole) {
  if (whole) rows.clear();
  if (!list.length) return;
  let newest = 0;
  for (const r of list) newest = Math.max(newest, Date.parse(r.window_start));
  if (!whole) {
    const from = newest - (TAIL - 1) * 60000;
    for (const [k, r] of rows) if (r.ws >= from) rows.delete(k);
  }
  for (const r of list) {
    const ws = Date.parse(r.window_start);
    rows.set(ws + "|" + r.partner_id + "|" + r.currency, {
      ws, partner: r.partner_id ?? "", currency: r.currency ?? "",
      events: r.events, errors: r.errors, amount: r.amount,
    });
  }
  const keepFrom = newest - (HOUR - 1) * 60000;
  for (const [k, r] of rows) if (r.ws < keepFrom) rows.delete(k);
}

// "123.45" -> [12345n, 2]
function decimal(s) {
  if (s == null) return [0n, 0];
  const neg = s.startsWith("-");
  const [i, f = ""] = (neg ? s.slice(1) : s).split(".");
  const v = BigInt(i + f);
  return [neg ? -v : v, f.length];
}

function decimalText(v, scale) {
  const neg = v < 0n;
  let s = (neg ? -v : v).toString().padStart(scale + 1, "0");
  const int = s.slice(0, s.length - scale), frac = s.slice(s.length - scale);
  const grouped = fmt.format(BigInt(int));
  return (neg ? "-" : "") + grouped + (scale ? "." + frac : "");
}

function aggregate() {
  const minutes = new Map(), partners = new Map(), amounts = new Map();
  for (const r of rows.values()) {
    const m = minutes.get(r.ws) || { events: 0, errors: 0, by: new Map() };
    m.events += r.events; m.errors += r.errors;
    const pm = m.by.get(r.partner) || { events: 0, errors: 0 };
    pm.events += r.events; pm.errors += r.errors;
    m.by.set(r.partner, pm);
    minutes.set(r.ws, m);
    const p = partners.get(r.partner) || { events: 0, errors: 0 };
    p.events += r.events; p.errors += r.errors;
    partners.set(r.partner, p);
    const [v, scale] = decimal(r.amount);
    const a = amounts.get(r.currency) || { v: 0n, scale };
    if (scale > a.scale) { a.v *= 10n ** BigInt(scale - a.scale); a.scale = scale; }
    a.v += v * 10n ** BigInt(a.scale - scale);
    amounts.set(r.currency, a);
  }
  const xs = [...minutes.keys()].sort((a, b) => a - b);
  const ranked = [...partners.entries()].sort((a, b) => b[1].events - a[1].events || (a[0] < b[0] ? -1 : 1));
  return { minutes, xs, ranked, amounts };
}

// Event time is UTC everywhere in tally; the charts say so rather than follow the browser's zone.
const hhmm = (ts) => new Date(ts * 1000).toISOString().slice(11, 16);

function chartOpts(title, series, el, percent) {
  return {
    width: Math.max(240, el.clientWidth), height: window.innerWidth < 760 ? 200 : 260,
    legend: { live: true },
    cursor: { points: { size: 6 } },
    scales: { x: { time: true } },
    axes: [
      {
        stroke: "#8b98a8", grid: { stroke: "#263140" }, ticks: { stroke: "#263140" },
        space: 60, incrs: [60, 120, 300, 600, 900, 1800, 3600],
        values: (u, vals) => vals.map(hhmm),
      },
      {
        stroke: "#8b98a8", grid: { stroke: "#263140" }, ticks: { stroke: "#263140" }, size: 60,
        values: (u, vals) => vals.map((v) => (percent ? v.toFixed(1) + "%" : fmt.format(v))),
      },
    ],
    series: [{ label: "UTC", value: (u, v) => (v == null ? "–" : hhmm(v)) }, ...series.map((name, i) => ({
      label: name, stroke: COLORS[i % COLORS.length], width: i === 0 ? 2.5 : 1.5,
      value: (u, v) => (v == null ? "–" : percent ? v.toFixed(2) + "%" : fmt.format(v)),
    }))],
  };
}

function drawCharts(agg) {
  const top = agg.ranked.slice(0, TOP).map(([p]) => p);
  const names = ["total", ...top];
  const x = agg.xs.map((ws) => ws / 1000);
  const events = [agg.xs.map((ws) => agg.minutes.get(ws).events)];
  const rates = [agg.xs.map((ws) => { const m = agg.minutes.get(ws); return m.events ? 100 * m.errors / m.events : null; })];
  for (const p of top) {
    events.push(agg.xs.map((ws) => agg.minutes.get(ws).by.get(p)?.events ?? 0));
    rates.push(agg.xs.map((ws) => { const v = agg.minutes.get(ws).by.get(p); return v && v.events ? 100 * v.errors / v.events : null; }));
  }
  const key = names.join("\u0000");
  if (key !== chartKey || !charts.events) {
    for (const c of Object.values(charts)) c.destroy();
    const ev = $("events-chart"), er = $("errors-chart");
    ev.textContent = ""; er.textContent = "";
    charts.events = new uPlot(chartOpts("events", names, ev, false), [x, ...events], ev);
    charts.errors = new uPlot(chartOpts("errors", names, er, true), [x, ...rates], er);
    chartKey = key;
  } else {
    charts.events.setData([x, ...events]);
    charts.errors.setData([x, ...rates]);
  }
}

function drawPartners(agg) {
  const newest = agg.xs[agg.xs.length - 1];
  const last = newest != null ? agg.minutes.get(newest).by : new Map();
  const body = el("tbody");
  if (!agg.ranked.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "no live data yet")));
  for (const [p, t] of agg.ranked) {
    const alert = firing.has(p);
    body.append(el("tr", { class: alert ? "firing" : "", "data-partner": p },
      el("td", {}, p || "(none)"),
      el("td", { class: "num" }, fmt.format(t.events)),
      el("td", { class: "num" }, fmt.format(last.get(p)?.events ?? 0)),
      el("td", { class: "num" }, fmt.format(t.errors)),
      el("td", { class: "num" + (alert ? " rate-high" : "") }, pct(t.errors, t.events)),
      el("td", {}, alert ? el("span", { class: "badge firing" }, "firing") : el("span", { class: "badge ok" }, "ok")),
    ));
  }
  $("partners").tBodies[0].replaceWith(body);

  const amounts = el("tbody");
  for (const [c, a] of [...agg.amounts.entries()].sort()) {
    amounts.append(el("tr", {}, el("td", {}, c || "(none)"), el("td", { class: "num" }, decimalText(a.v, a.scale))));
  }
  $("amounts").tBodies[0].replaceWith(amounts);

  // The newest minute is still filling: the header shows the last closed one.
  const closed = agg.xs.length > 1 ? agg.minutes.get(agg.xs[agg.xs.length - 2]) : agg.minutes.get(newest);
  $("rate").textContent = closed ? fmt.format(closed.events) : "–";
  $("error-rate").textContent = closed ? pct(closed.errors, closed.events) : "–";
}

function setStat(id, text, level) {
  const v = $(id);
  v.textContent = text;
  v.parentElement.className = "stat" + (level ? " " + level : "");
}

function drawStatus(s) {
  const age = s.seconds_since_last_commit;
  setStat("freshness", age == null ? "no batches" : age.toFixed(1) + " s ago",
    age == null ? "warn" : age < 5 ? "ok" : age < 60 ? "warn" : "bad");
  setStat("watermark", s.watermark ? s.watermark.slice(11, 19) + " UTC" : "–",
    s.watermark_lag_seconds == null ? "" : s.watermark_lag_seconds < 300 ? "" : "warn");
  firing = new Map(s.firing.map((f) => [f.partner_id, f.since]));
  setStat("firing-count", String(s.firing.length), s.firing.length ? "bad" : "ok");
  setStat("quarantined", s.quarantined_files.toLocaleString("en-US"), s.quarantined_files ? "bad" : "ok");
  const list = el("ul", { id: "firing" });
  for (const f of s.firing) list.append(el("li", {}, el("b", {}, f.partner_id), " error rate over the threshold since " + f.since.slice(11, 16) + " UTC"));
  $("firing").replaceWith(list);
  $("alerts").className = "card alerts" + (s.firing.length ? "" : " none");

  const body = el("tbody");
  if (!s.reconciliations.length) body.append(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "no reconciliation yet")));
  for (const r of s.reconciliations) {
    body.append(el("tr", {},
      el("td", {}, r.day),
      el("td", {}, el("span", { class: "badge " + (r.verdict === "ok" ? "ok" : "drift") }, r.verdict)),
      el("td", { class: "num" }, r.drifting + " / " + r.partners),
      el("td", { class: "num" }, r.max_unexplained_drift == null ? "–" : (100 * r.max_unexplained_drift).toFixed(3) + "%"),
    ));
  }
  $("reconciliations").tBodies[0].replaceWith(body);
}

async function poll() {
  const whole = polls % 60 === 0;
  polls++;
  try {
    const [live, status] = await Promise.all([
      getJson("/api/live?minutes=" + (whole ? HOUR : TAIL)),
      getJson("/api/status"),
    ]);
    merge(live, whole);
    drawStatus(status);
    const agg = aggregate();
    drawPartners(agg);
    drawCharts(agg);
    $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (e) {
    setStat("freshness", "disconnected", "bad");
    $("updated").textContent = String(e.message || e);
  }
}

async function loop() {
  const started = Date.now();
  await poll();
  setTimeout(loop, Math.max(100, POLL_MS - (Date.now() - started)));
}

window.addEventListener("resize", () => {
  for (const [id, c] of Object.entries(charts)) {
    const host = $(id + "-chart");
    c.setSize({ width: Math.max(240, host.clientWidth), height: window.innerWidth < 760 ? 200 : 260 });
  }
});
loop();
