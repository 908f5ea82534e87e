// The ops page: signs in, polls /v1/ops/lag and /v1/ops/throughput, draws SVG charts and
// the services `bankflow run all` supervises (throughput.supervisor).
// No library and nothing from elsewhere: operators' networks are closed, and the page's
// content security policy allows this origin only. Data reaches the page through
// textContent and SVG attributes, never as HTML.
"use strict";

(() => {
  const ACCESS_KEY = "bankflow-ops-access-token";
  const REFRESH_KEY = "bankflow-ops-refresh-token";
  // Every 5 s: the API evaluates lag at most every 2 s, the exporter every 5 s.
  const REFRESH_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLOURS = [
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
    "#db2777", "#65a30d", "#ea580c", "#475569", "#0d9488", "#9333ea",
  ];
  const number = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });
  const $ = (id) => document.getElementById(id);
  let timer = null;

  class SignInNeeded extends Error {}
  class NotStaff extends Error {}

  // ------------------------------------------------------------ tokens

  function takeTokenFromFragment() {
    // /ops#token=... : the fragment never reaches the server; drop it from the address bar.
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token) {
      sessionStorage.setItem(ACCESS_KEY, token);
      sessionStorage.removeItem(REFRESH_KEY);
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function keep(pair) {
    sessionStorage.setItem(ACCESS_KEY, pair.access_token);
    if (pair.refresh_token) sessionStorage.setItem(REFRESH_KEY, pair.refresh_token);
  }

  function forget() {
    sessionStorage.removeItem(ACCESS_KEY);
    sessionStorage.removeItem(REFRESH_KEY);
  }

  async function refreshTokens() {
    const refreshToken = sessionStorage.getItem(REFRESH_KEY);
    if (!refreshToken) return false;
    const response = await fetch("/v1/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: refreshToken }),
    });
    if (!response.ok) return false;
    keep(await response.json());
    return true;
  }

  async function getJson(path) {
    const call = () => fetch(path, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem(ACCESS_KEY) || ""}` },
    });
    let response = await call();
    if (response.status === 401 && await refreshTokens()) response = await call();
    if (response.status === 401) throw new SignInNeeded();
    if (response.status === 403) throw new NotStaff();
    if (!response.ok) throw new Error(await problemDetail(response));
    return response.json();
  }

  async function problemDetail(response) {
    try {
      const problem = await response.json();
      return problem.detail || problem.title || `HTTP ${response.status}`;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  // ------------------------------------------------------- sign in/out

  function showSignIn(message) {
    clearTimeout(timer);
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
    setStatus("signed out");
    document.body.dataset.state = "signed-out";
  }

  async function signIn(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const response = await fetch("/v1/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ username: form.get("username"), password: form.get("password") }),
    });
    if (!response.ok) {
      $("sign-in-error").textContent = await problemDetail(response);
      return;
    }
    keep(await response.json());
    event.target.reset();
    start();
  }

  async function signOut() {
    const token = sessionStorage.getItem(ACCESS_KEY);
    forget();
    if (token) {
      await fetch("/v1/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${token}` } })
        .catch(() => undefined);
    }
    showSignIn("Signed out.");
  }

  function start() {
    $("sign-in").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    $("every").textContent = String(REFRESH_MS / 1000);
    poll();
  }

  // ------------------------------------------------------------ polling

  async function poll() {
    clearTimeout(timer);
    try {
      const [lag, throughput] = await Promise.all([
        getJson("/v1/ops/lag"), getJson("/v1/ops/throughput"),
      ]);
      render(lag, throughput);
      setStatus("live");
    } catch (error) {
      if (error instanceof SignInNeeded) return showSignIn("Your session ended; sign in again.");
      if (error instanceof NotStaff) {
        forget();
        return showSignIn("This account has no staff role; the ops page needs one.");
      }
      setStatus(`update failed: ${error.message}`, true);
    }
    timer = setTimeout(poll, REFRESH_MS);
  }

  function setStatus(text, failing = false) {
    $("status").textContent = text;
    $("status").classList.toggle("failing", failing);
  }

  // ------------------------------------------------------------ render

  function render(lag, throughput) {
    renderServices(throughput.supervisor);
    renderLagTable(lag);
    lineChart($("lag-chart"), seriesOf(lag.history, (p) => p.lag_messages), "messages");
    barChart($("throughput-bars"), [
      ...throughput.stages.map((s) => ({ label: s.topic, value: s.messages_per_s })),
      { label: "ledger postings", value: throughput.postings_per_s },
    ]);
    const rates = seriesOf(throughput.history, (p) => activeRates(p, throughput.history));
    rates.push({
      name: "ledger postings",
      points: throughput.history.map((p) => [p.at, p.postings_per_s]),
    });
    lineChart($("throughput-chart"), rates, "per s");
    $("window").textContent = String(throughput.window_s);
    $("dead-letters-open").textContent = number.format(throughput.dead_letters.open);
    $("dead-letters-open").dataset.value = String(throughput.dead_letters.open);
    $("dead-letters-rate").textContent = number.format(throughput.dead_letters.arriving_per_s);
    lineChart($("dead-letters-chart"), [{
      name: "open dead letters",
      points: throughput.history.map((p) => [p.at, p.dead_letters_open]),
    }], "open");
    const review = throughput.review_queue;
    $("review-held").textContent = number.format(review.held);
    $("review-held").dataset.value = String(review.held);
    $("review-oldest").textContent = review.oldest_held_s === null ? "–" : duration(review.oldest_held_s);
    $("review-rate").textContent = number.format(review.arriving_per_s);
    lineChart($("review-chart"), [{
      name: "held for review",
      points: throughput.history.map((p) => [p.at, p.review_held]),
    }], "held");
    $("updated").textContent = new Date(lag.evaluated_at).toLocaleTimeString();
    document.body.dataset.evaluatedAt = lag.evaluated_at;
    document.body.dataset.state = "ready";
  }

  function renderLagTable(lag) {
    const body = $("lag-table").tBodies[0];
    const rows = lag.groups.map((group) => {
      const row = document.createElement("tr");
      row.dataset.group = group.name;
      row.dataset.groupId = group.group_id;
      row.dataset.status = group.status;
      row.dataset.lagMessages = String(group.lag_messages);
      row.dataset.lagSeconds = String(group.lag_seconds);
      const status = cell(group.status);
      status.className = `status status-${group.status.toLowerCase()}`;
      row.append(
        cell(group.name), status, cell(number.format(group.lag_messages), "number"),
        cell(number.format(group.lag_seconds), "number"),
      );
      return row;
    });
    body.replaceChildren(...rows);
    $("lag-errors").textContent = (lag.errors || []).join("; ");
  }

  // One row per process run all supervises; crash loops and restart delays stand out.
  function renderServices(supervisor) {
    const body = $("services-table").tBodies[0];
    const services = supervisor ? supervisor.services : [];
    const rows = services.map((service) => {
      const row = document.createElement("tr");
      row.dataset.service = service.name;
      row.dataset.state = service.state;
      row.dataset.restarts = String(service.restarts);
      row.dataset.crashLooping = String(service.crash_looping);
      const waiting = service.restart_in_s === null ? "" : ` (${duration(service.restart_in_s)})`;
      const state = cell(service.state + waiting);
      state.className = `status service-${service.state}`;
      row.append(
        cell(service.name), state, cell(service.pid === null ? "–" : String(service.pid), "number"),
        cell(number.format(service.restarts), "number"),
        cell(service.last_exit_code === null ? "–" : String(service.last_exit_code), "number"),
        cell(service.last_start_at ? new Date(service.last_start_at).toLocaleTimeString() : "–"),
      );
      return row;
    });
    body.replaceChildren(...rows);
    let note = "";
    if (!supervisor) note = "No `bankflow run all` has run on the API's host.";
    else if (!supervisor.running) {
      note = `bankflow run all is not running (last seen ${new Date(supervisor.updated_at).toLocaleTimeString()}).`;
    }
    $("services-note").textContent = note;
    $("services-section").dataset.supervisor = supervisor ? String(supervisor.running) : "none";
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  // Only the topics that moved in the history get a line; a quiet pipeline shows its entry.
  function activeRates(point, history) {
    const moved = new Set();
    for (const p of history) {
      for (const [topic, rate] of Object.entries(p.messages_per_s)) if (rate > 0) moved.add(topic);
    }
    if (moved.size === 0) moved.add("transfers.requested");
    return Object.fromEntries(Object.entries(point.messages_per_s).filter(([t]) => moved.has(t)));
  }

  // [{at, ...}] and a function giving {name: value} per point -> [{name, points: [[at, v]]}]
  function seriesOf(history, values) {
    const series = new Map();
    for (const point of history) {
      for (const [name, value] of Object.entries(values(point))) {
        if (!series.has(name)) series.set(name, []);
        series.get(name).push([point.at, value]);
      }
    }
    return [...series].map(([name, points]) => ({ name, points }));
  }

  function duration(seconds) {
    if (seconds < 120) return `${Math.round(seconds)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    return `${Math.round(seconds / 3600)} h`;
  }

  // ------------------------------------------------------------ charts

  function svg(name, attributes, text) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    const step = [1, 2, 5, 10].find((s) => s * power >= value);
    return step * power;
  }

  // A line per series over time; the legend to the right; y from 0 to a round maximum.
  function lineChart(target, series, unit) {
    const [width, height] = target.getAttribute("viewBox").split(" ").slice(2).map(Number);
    const plot = { left: 48, top: 24, right: width - 170, bottom: height - 24 };
    const all = series.flatMap((s) => s.points);
    const times = all.map(([t]) => t);
    const t0 = times.length ? Math.min(...times) : Date.now() / 1000;
    const t1 = Math.max(...times, t0 + 1);
    const yMax = niceMax(Math.max(0, ...all.map(([, v]) => v)));
    const x = (t) => plot.left + ((t - t0) / (t1 - t0 || 1)) * (plot.right - plot.left);
    const y = (v) => plot.bottom - (v / yMax) * (plot.bottom - plot.top);
    const parts = [];
    for (const fraction of [0, 0.5, 1]) {
      const v = yMax * fraction;
      parts.push(svg("line", { x1: plot.left, x2: plot.right, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: plot.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" },
        number.format(v)));
    }
    parts.push(svg("text", { x: plot.left, y: height - 6, class: "tick" },
      new Date(t0 * 1000).toLocaleTimeString()));
    parts.push(svg("text", { x: plot.right, y: height - 6, class: "tick", "text-anchor": "end" },
      new Date(t1 * 1000).toLocaleTimeString()));
    parts.push(svg("text", { x: 4, y: 10, class: "tick" }, unit));
    series.forEach((s, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const d = s.points.map(([t, v], n) => `${n ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      if (s.points.length === 1) {
        const [[t, v]] = s.points;
        parts.push(svg("circle", { cx: x(t), cy: y(v), r: 3, fill: colour, "data-series-name": s.name }));
      } else if (d.length) {
        parts.push(svg("path", {
          d: d.join(""), stroke: colour, class: "line", "data-series-name": s.name,
        }));
      }
      const last = s.points.length ? s.points[s.points.length - 1][1] : 0;
      const legendY = plot.top + 8 + i * 16;
      parts.push(svg("rect", { x: plot.right + 12, y: legendY - 8, width: 10, height: 10, fill: colour }));
      parts.push(svg("text", { x: plot.right + 28, y: legendY + 1, class: "legend" },
        `${s.name} ${number.format(last)}`));
    });
    target.replaceChildren(...parts);
    target.dataset.series = String(series.length);
    target.dataset.points = String(all.length);
  }

  // One horizontal bar per item, its value written beside it.
  function barChart(target, bars) {
    const width = Number(target.getAttribute("viewBox").split(" ")[2]);
    const left = 150;
    const barHeight = 18;
    const max = niceMax(Math.max(0, ...bars.map((b) => b.value)));
    const parts = [];
    bars.forEach((bar, i) => {
      const top = 6 + i * (barHeight + 4);
      const length = (bar.value / max) * (width - left - 70);
      parts.push(svg("text", { x: left - 6, y: top + 13, class: "legend", "text-anchor": "end" }, bar.label));
      parts.push(svg("rect", {
        x: left, y: top, width: Math.max(length, 1), height: barHeight,
        fill: COLOURS[i % COLOURS.length], class: "bar", "data-label": bar.label, "data-value": bar.value,
      }));
      parts.push(svg("text", { x: left + Math.max(length, 1) + 6, y: top + 13, class: "legend" },
        number.format(bar.value)));
    });
    target.setAttribute("viewBox", `0 0 ${width} ${Math.max(40, 10 + bars.length * (barHeight + 4))}`);
    target.replaceChildren(...parts);
    target.dataset.series = String(bars.length);
  }

  // ------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    takeTokenFromFragment();
    if (sessionStorage.getItem(ACCESS_KEY)) start();
    else showSignIn();
  });
})();
