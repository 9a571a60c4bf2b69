/* The bitfleet dashboard: jobs, a job's rounds (uPlot charts, refreshed live), agents.
 *
 * Everything it shows comes from the coordinator's control API with the admin token, which
 * stays in this tab's sessionStorage; a refused token brings back the sign-in form. Every
 * value from the API is set as text (never parsed as HTML): job names and reasons are
 * whatever a user or an agent sent. Views refresh every REFRESH_MS while shown.
 */
"use strict";

const REFRESH_MS = 1000;
const TOKEN_KEY = "bitfleet-admin-token";
const dashboard = { charts: {}, view: null, timer: null };
window.bitfleetDashboard = dashboard; // what the browser tests read (one point per round)

class Refused extends Error {}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const reply = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (reply.status === 401 || reply.status === 403) {
    throw new Refused(`the coordinator refused this token (HTTP ${reply.status})`);
  }
  if (!reply.ok) {
    let detail = "";
    try { detail = (await reply.json()).detail || ""; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: HTTP ${reply.status} ${detail}`);
  }
  return path.endsWith("/model") ? reply.blob() : reply.json();
}

/* An element with attributes and children (strings become text nodes). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headings, rows, numeric = []) {
  const head = el("tr", {}, headings.map((h, i) =>
    el("th", numeric.includes(i) ? { class: "number" } : {}, h)));
  const body = rows.map((cells) => el("tr", {}, cells.map((cell, i) =>
    el("td", numeric.includes(i) ? { class: "number" } : {}, cell))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

const percent = (value) => `${(100 * value).toFixed(2)} %`;
const kilobytes = (bytes) => `${(bytes / 1024).toFixed(1)} kB`;

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  const when = new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
  if (delta < 90) return `${when} UTC (${Math.round(delta)} s ago)`;
  if (delta < 5400) return `${when} UTC (${Math.round(delta / 60)} min ago)`;
  return `${when} UTC`;
}

function reasons(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([reason, n]) => `${reason}: ${n}`).join(", ") : "none";
}

function statusCell(job) {
  const status = el("span", { class: `status-${job.status}` }, job.status);
  return job.reason ? el("span", {}, status, el("br"), el("span", { class: "muted" }, job.reason))
    : status;
}

/* Views: each fills #main from what it fetched, again at every refresh. */

async function jobsView(main) {
  const jobs = await api("/api/v1/jobs");
  const rows = jobs.map((job) => {
    const last = job.metrics[job.metrics.length - 1];
    const perRound = job.status === "running" && job.round_agents
      ? `${job.spec.agents_per_round} (${job.round_agents} selected)` : job.spec.agents_per_round;
    return [
      el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id),
      job.name, statusCell(job), `${job.round} / ${job.rounds}`, perRound,
      last ? percent(last.test_accuracy) : "–",
    ];
  });
  main.replaceChildren(
    el("h2", {}, "Jobs"),
    jobs.length ? table(["job", "name", "status", "round", "agents per round",
      "accuracy"], rows, [3, 4, 5]) : el("p", { class: "muted" }, "No jobs yet."));
}

function chart(key, container, title, series, data, format) {
  const existing = dashboard.charts[key];
  if (existing && existing.root.isConnected) {
    existing.setData(data);
    return existing.root;
  }
  const options = {
    title, width: 460, height: 240,
    scales: { x: { time: false } },
    series: [{ label: "round", value: (u, v) => (v === null ? "--" : String(v)) }, ...series],
    axes: [
      { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
      { values: (u, ticks) => ticks.map(format), size: 70 },
    ],
  };
  const plot = new uPlot(options, data, container);
  dashboard.charts[key] = plot;
  return plot.root;
}

async function jobView(main, jobId) {
  const [job, refusals] = await Promise.all([
    api(`/api/v1/jobs/${encodeURIComponent(jobId)}`), api("/api/v1/refusals"),
  ]);
  const rounds = job.metrics.map((m) => m.round);
  const accuracy = [rounds, job.metrics.map((m) => m.test_accuracy)];
  const bytes = [rounds, job.metrics.map((m) => m.bytes_up), job.metrics.map((m) => m.bytes_down)];
  let charts = main.querySelector(".charts");
  if (!charts || main.dataset.job !== jobId) {
    dashboard.charts = {};
    main.dataset.job = jobId;
    charts = el("div", { class: "charts" },
      el("div", { class: "chart", id: "accuracy-chart" }),
      el("div", { class: "chart", id: "bytes-chart" }));
    main.replaceChildren(el("div", { id: "job-head" }), charts, el("div", { id: "job-tables" }));
  }
  chart("accuracy", charts.querySelector("#accuracy-chart"), "Test accuracy per round",
    [{ label: "test accuracy", stroke: "#0b6bcb", width: 2, points: { show: true },
      value: (u, v) => (v === null ? "--" : percent(v)) }], accuracy, percent);
  const kb = (u, v) => (v === null ? "--" : kilobytes(v));
  chart("bytes", charts.querySelector("#bytes-chart"), "Bytes per round", [
    { label: "up (uploads)", stroke: "#1a7f37", width: 2, points: { show: true }, value: kb },
    { label: "down (models)", stroke: "#b35c00", width: 2, points: { show: true }, value: kb },
  ], bytes, kilobytes);
  const download = el("button", { type: "button", id: "download", onclick: () => downloadModel(job.id) },
    "Download the model (.bfm)");
  main.querySelector("#job-head").replaceChildren(
    el("h2", {}, `${job.name} `, el("span", { class: "muted" }, job.id)),
    el("p", {}, statusCell(job), ` · round ${job.round} of ${job.rounds} · ${job.algorithm}`,
      job.status === "running" ? ` · ${job.round_uploads} of ${job.round_agents} uploads in` : ""),
    download);
  const rows = job.metrics.map((m) => [m.round, percent(m.test_accuracy), m.loss.toFixed(4),
    m.uploads, kilobytes(m.bytes_up), kilobytes(m.bytes_down), m.seconds.toFixed(1)]);
  const declines = job.declines.map((d) => [d.agent_id, d.round, d.reason]);
  main.querySelector("#job-tables").replaceChildren(
    el("h3", {}, "Rounds"),
    rows.length ? table(["round", "accuracy", "loss", "uploads", "up", "down", "seconds"], rows,
      [0, 1, 2, 3, 4, 5, 6]) : el("p", { class: "muted" }, "No round has closed yet."),
    el("h3", {}, "Refused uploads"),
    el("p", { id: "job-refusals" }, reasons(refusals.jobs[job.id])),
    el("h3", {}, "Declines"),
    declines.length ? table(["agent", "round", "reason"], declines)
      : el("p", { class: "muted" }, "None."));
}

async function downloadModel(jobId) {
  const blob = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/model`);
  const link = el("a", { href: URL.createObjectURL(blob), download: `${jobId}.bfm` });
  document.body.append(link);
  link.click();
  link.remove();
}

async function agentsView(main) {
  const [agents, jobs, refusals] = await Promise.all([
    api("/api/v1/agents"), api("/api/v1/jobs"), api("/api/v1/refusals"),
  ]);
  const declined = {};
  for (const job of jobs) {
    for (const d of job.declines) {
      (declined[d.agent_id] = declined[d.agent_id] || []).push(`${job.id}: ${d.reason}`);
    }
  }
  const rows = agents.map((agent) => {
    const state = agent.revoked ? "revoked" : agent.online ? "online" : "offline";
    return [
      agent.agent_id, el("span", { class: agent.online ? "online" : "offline" }, state),
      ago(agent.last_seen), agent.transport || "–", JSON.stringify(agent.capabilities),
      agent.rounds_contributed, (declined[agent.agent_id] || []).join("; ") || "none",
      reasons(refusals.agents[agent.agent_id]),
    ];
  });
  main.replaceChildren(
    el("h2", {}, "Agents"),
    agents.length ? table(["agent", "state", "last seen", "transport", "capabilities",
      "rounds contributed", "declines", "refused uploads"], rows, [5])
      : el("p", { class: "muted" }, "No agents enrolled."));
}

/* Routing, sign-in and the refresh loop. */

function route() {
  const hash = location.hash || "#/jobs";
  const job = hash.match(/^#\/jobs\/([^/]+)$/);
  if (job) return (main) => jobView(main, decodeURIComponent(job[1]));
  if (hash === "#/agents") return agentsView;
  return jobsView;
}

function signIn(message) {
  clearTimeout(dashboard.timer);
  document.getElementById("main").replaceChildren();
  document.getElementById("sign-out").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
}

async function refresh() {
  clearTimeout(dashboard.timer);
  const main = document.getElementById("main");
  try {
    await route()(main);
    document.getElementById("updated").textContent =
      `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error instanceof Refused) {
      sessionStorage.removeItem(TOKEN_KEY);
      signIn(`Sign-in refused: ${error.message}. Check the admin token.`);
      return;
    }
    document.getElementById("updated").textContent = `not updated: ${error.message}`;
  }
  dashboard.timer = setTimeout(refresh, REFRESH_MS);
}

function start() {
  document.getElementById("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
    document.getElementById("token").value = "";
    document.getElementById("sign-in").hidden = true;
    document.getElementById("sign-out").hidden = false;
    refresh();
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn("");
  });
  window.addEventListener("hashchange", refresh);
  if (sessionStorage.getItem(TOKEN_KEY)) {
    document.getElementById("sign-out").hidden = false;
    refresh();
  } else {
    signIn("");
  }
}

start();
