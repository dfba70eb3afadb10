// walq ui: the page's one script. It polls /api/snapshot (read by the server at its own
// pace, so many open pages cost no more reads), fetches lists a page at a time, draws the
// rate charts as inline SVG and sends actions. No framework, no build step, nothing remote.
"use strict";

const settings = JSON.parse(document.querySelector('meta[name="walq-settings"]').content);
const STATES = ["pending", "scheduled", "running", "dead", "waiting"];
const PAGE = 50;
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

let snap = null;
let view = "overview";
let listState = "dead";
let listAfter = 0;  // the page shown starts after this job id
let listBefore = [];  // the pages before it, as their `after` ids (for "Newer")
let listNext = null;
let listAsked = 0;  // the last list request sent
let lastState = null, lastAfter = null;  // the page it asked for
let jobId = null;
let historyNext = null;
const selected = new Set();

// -- small helpers ------------------------------------------------------------------------

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function fill(el, ...kids) { el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined)); }
const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pill = (text, cls) => h("span", { class: `pill ${cls || text}` }, text);

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, seconds);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function when(t) {
  if (!t) return "–";
  return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...(options || {}) });
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok && !("ok" in (body || {}))) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function toast(text, bad) {
  const el = $("toast");
  el.textContent = text;
  el.className = bad ? "toast bad" : "toast";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

// -- actions --------------------------------------------------------------------------------

function confirmFirst(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    const done = (answer) => { dialog.close(); resolve(answer); };
    $("confirm-yes").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
    dialog.oncancel = () => resolve(false);
    dialog.showModal();
  });
}

async function act(action, args, question) {
  if (typeof args === "function") args = args();
  if (args === null) return null;
  if (typeof question === "function") question = question(args);
  if (question && !(await confirmFirst(question))) return null;
  const body = JSON.stringify({ action, ...args });
  const headers = { "Content-Type": "application/json", "X-Walq-Token": settings.token };
  let result;
  try {
    result = await api("/api/action", { method: "POST", body, headers });
  } catch (e) { toast(`${action}: ${e.message}`, true); return null; }
  toast(`${action}: ${result.result}`, !result.ok);
  if (result.ok) selected.clear();
  await refresh();
  if (view === "list") await loadList();
  if (view === "job" && jobId !== null) await loadJob(jobId);
  return result;
}

// A button for `action`; `args` may be a function (called on click; null: do nothing).
function actionButton(label, action, args, question, danger) {
  const off = settings.readOnly || ((action === "pause" || action === "resume") && !(snap && snap.can_pause));
  const why = settings.readOnly ? "read-only dashboard" : off ? "this queue cannot pause a task" : null;
  return h("button", {
    type: "button", class: danger ? "danger" : null, disabled: off, title: why,
    "data-action": action, onclick: () => act(action, args, question),
  }, label);
}

function selectedIds() {
  const ids = [...selected];
  if (!ids.length) { toast("select some dead jobs first", true); return null; }
  return { ids };
}

// -- the live numbers ------------------------------------------------------------------------

async function refresh() {
  try {
    snap = await api("/api/snapshot");
  } catch (e) {
    $("live").textContent = `cannot reach the dashboard: ${e.message}`;
    $("live").className = "live stale";
    return;
  }
  const banner = $("banner");
  banner.hidden = !snap.error;
  if (snap.error) { banner.textContent = `Reading the queue failed: ${snap.error}`; return; }
  const age = Date.now() / 1000 - snap.read_at;
  const from = { owner: "from the owner", files: "from the files", server: "from the server" }[snap.read_from] || "";
  $("live").textContent = `read ${ago(age)} ago ${from} (${(snap.read_seconds * 1000).toFixed(0)} ms)`;
  $("live").dataset.from = snap.read_from || "";
  $("live").className = age < 10 ? "live ok" : "live stale";
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    const state = a.dataset.view;
    if (STATES.includes(state)) {
      let n = a.querySelector(".n");
      if (!n) { n = h("span", { class: "n" }); a.append(n); }
      n.textContent = num(snap.jobs[state]);
    }
  }
  renderOverview();
  renderWorkers();
  renderStorage();
  renderActions();
}

function renderOverview() {
  const cards = STATES.map((s) => h("a", { class: `card ${s}`, href: `#${s}`, "data-state": s },
    h("div", { class: "label" }, s), h("div", { class: "value", "data-count": s }, num(snap.jobs[s]))));
  const done = h("div", { class: "card done" },
    h("div", { class: "label", title: snap.done_since ? `counted${snap.done_since}` : "" }, `done${snap.done_since ? " *" : ""}`),
    h("div", { class: "value", "data-count": "done" }, num(snap.done)));
  fill($("counts"), cards, done);
  renderCharts();
  renderTasks();
  renderBudget();
}

let chartMinutes = 60;

function renderCharts() {
  const s = snap.series;
  const keep = Math.round((chartMinutes * 60) / s.step);
  const names = { enqueued: "Enqueued", completed: "Completed", failed: "Failed" };
  const colours = { enqueued: "var(--pending)", completed: "var(--running)", failed: "var(--dead)" };
  const charts = Object.keys(names).map((name) => {
    const values = s.rates[name].slice(-keep);
    const last = values.length > 1 ? values[values.length - 2] : null;  // the newest whole bin
    return h("div", { class: "chart", "data-chart": name },
      h("h3", {}, names[name], h("span", {}, last === null ? "–" : `${last.toFixed(1)}/s`)), svgChart(values, colours[name], s.step));
  });
  // The log keeps no time for an ack or a claim: the rates are counted from the dashboard's own reads.
  const since = s.since ? `Counted since the dashboard started at ${when(s.since)}: the log records no time for a claim or an ack, so the time before is not known and is left blank.` : "Counting starts with the next read.";
  fill($("charts"), charts, h("p", { class: "muted since", id: "chart-since" }, since));
  for (const b of document.querySelectorAll("#chart-span button")) b.classList.toggle("on", Number(b.dataset.minutes) === chartMinutes);
}

function svgChart(values, colour, step) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 300, H = 90, top = 12, bottom = 14;
  const max = Math.max(1, ...values.filter((v) => v !== null));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const x = (i) => (i / Math.max(1, values.length - 1)) * W;
  const y = (v) => H - bottom - (v / max) * (H - top - bottom);
  // Bins not known (before the dashboard's first read) are left out, not drawn as zero.
  const first = values.findIndex((v) => v !== null);
  const known = first < 0 ? [] : values.slice(first);
  const points = known.map((v, i) => `${x(i + first).toFixed(1)},${y(v).toFixed(1)}`);
  if (first > 0) {
    const unknown = document.createElementNS(NS, "rect");
    unknown.setAttribute("class", "unknown");
    for (const [k, v] of Object.entries({ x: 0, y: top, width: x(first), height: H - top - bottom })) unknown.setAttribute(k, v);
    svg.append(unknown);
  }
  const area = document.createElementNS(NS, "path");
  const x0 = first < 0 ? 0 : x(first);
  area.setAttribute("d", points.length ? `M${x0.toFixed(1)},${H - bottom} L${points.join(" L")} L${W},${H - bottom} Z` : "");
  area.setAttribute("fill", colour);
  area.setAttribute("fill-opacity", "0.15");
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", colour);
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  const axis = document.createElementNS(NS, "line");
  axis.setAttribute("class", "axis");
  for (const [k, v] of Object.entries({ x1: 0, x2: W, y1: H - bottom, y2: H - bottom })) axis.setAttribute(k, v);
  svg.append(area, line, axis);
  const label = (text, tx, ty, anchor) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  };
  label(`${max.toFixed(max < 10 ? 1 : 0)}/s`, 2, 9, "start");
  label(`-${Math.round((values.length * step) / 60)} min`, 2, H - 2, "start");
  label("now", W - 2, H - 2, "end");
  return svg;
}

function renderTasks() {
  const limits = snap.task_limits || {};
  const breakers = snap.breakers || {};
  const names = [...new Set([...Object.keys(snap.tasks), ...Object.keys(limits)])].sort();
  const head = h("tr", {}, h("th", {}, "Task"), STATES.map((s) => h("th", { class: "num" }, s)),
    h("th", {}, "Breaker"), h("th", {}, "Concurrency"), h("th", {}, "Rate"), h("th", {}, ""));
  const rows = names.map((name) => {
    const c = snap.tasks[name] || {};
    const l = limits[name] || {};
    const breaker = l.breaker || breakers[name];
    const rate = l.rate ? `${l.rate.per_second}/s (burst ${l.rate.burst}, ${l.rate.tokens} free)` : "unlimited";
    const conc = l.concurrency ? `${l.running || 0} of ${l.concurrency}` : `${l.running || 0} running, no limit`;
    const paused = (snap.paused || []).includes(name);
    return h("tr", { "data-task": name, "data-paused": paused ? "yes" : "no" },
      h("td", { class: "mono" }, name, paused ? [" ", pill("paused", "open")] : null),
      STATES.map((s) => h("td", { class: "num", "data-count": s }, num(c[s] || 0))),
      h("td", {}, breaker ? pill(breaker) : h("span", { class: "muted" }, "no worker")),
      h("td", {}, limits[name] ? conc : "–"),
      h("td", {}, limits[name] ? rate : "–"),
      h("td", {}, actionButton("Pause", "pause", { task: name }), " ", actionButton("Resume", "resume", { task: name })));
  });
  fill($("tasks"), head, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "no jobs yet")));
}

function renderBudget() {
  const b = snap.retry_budget;
  if (!b) { fill($("budget"), h("p", { class: "muted" }, "No worker is reporting: the budget lives in the worker.")); return; }
  fill($("budget"), h("dl", {},
    h("dt", {}, "Retries allowed now"), h("dd", { "data-budget": "balance" }, b.balance.toFixed(1)),
    h("dt", {}, "Earned per first attempt"), h("dd", {}, b.ratio),
    h("dt", {}, "Floor"), h("dd", {}, `${b.floor} retries/s`),
    h("dt", {}, "Window"), h("dd", {}, `${b.window} s`)));
}

function renderWorkers() {
  const head = h("tr", {}, h("th", {}, "Pid"), h("th", {}, "Host"), h("th", { class: "num" }, "Processes"),
    h("th", {}, "Reported"), h("th", { class: "num" }, "Ok"), h("th", { class: "num" }, "Failed"),
    h("th", { class: "num" }, "Crashes"), h("th", { class: "num" }, "Timeouts"));
  const rows = (snap.workers || []).map((w) => {
    const c = w.counters || {};
    const kids = (w.children || []).map((k) => `${k.pid}: ${(k.jobs || []).length ? k.jobs.map((j) => `job ${j.job} (${j.task}, ${ago(j.running_for)})`).join(", ") : "idle"}`);
    return h("tr", { "data-worker": w.pid }, h("td", { class: "mono" }, w.pid), h("td", {}, w.host || "this machine"),
      h("td", { class: "num" }, w.processes, kids.length ? h("div", { class: "muted mono" }, kids.map((k) => h("div", {}, k))) : null),
      h("td", {}, w.age !== undefined ? `${ago(w.age)} ago` : when(w.updated)), h("td", { class: "num" }, num(c.ok)),
      h("td", { class: "num" }, num(c.failed)), h("td", { class: "num" }, num(c.crashes)), h("td", { class: "num" }, num(c.timeouts)));
  });
  const owner = snap.owner;
  $("owner-line").textContent = !owner ? "A server's queue has no owner: its workers are listed below."
    : owner.running ? `Owner running: pid ${owner.pid ?? "?"}. Actions go through it.`
    : owner.running === false ? "No owner is running: actions take the queue's lock for a moment." : "Cannot tell whether an owner runs.";
  fill($("workers"), head, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no worker has reported in the last 30 s")));
  $("workers").dataset.owner = owner ? String(owner.running) : "";
}

function renderStorage() {
  const l = snap.log;
  const dl = [];
  if (l) {
    dl.push(h("dt", {}, "Segments"), h("dd", {}, num(l.segments)),
      h("dt", {}, "On disk"), h("dd", {}, bytes(l.disk_bytes)),
      h("dt", {}, "Live jobs' bytes"), h("dd", {}, bytes(snap.live_bytes)),
      h("dt", {}, "Garbage"), h("dd", {}, `${bytes(snap.garbage_bytes)} (${((l.garbage_ratio || 0) * 100).toFixed(1)}%; sealed segments ${((l.sealed_garbage_ratio || 0) * 100).toFixed(1)}%)`),
      h("dt", {}, "Unfinished tail"), h("dd", {}, bytes(l.tail_bytes)),
      h("dt", {}, "Spooled jobs"), h("dd", {}, num(snap.spooled)),
      h("dt", {}, "Cut files"), h("dd", {}, num(l.cut_files)));
  } else if (snap.server) {
    const s = snap.server;
    dl.push(h("dt", {}, "Server"), h("dd", {}, `${s.name} ${s.version}`),
      h("dt", {}, "Durable"), h("dd", {}, s.durable ? "yes" : "no: see walq stats"),
      h("dt", {}, "Live jobs' bytes"), h("dd", {}, bytes(snap.live_bytes)),
      h("dt", {}, "Due now, not moved yet"), h("dd", {}, num(s.due_now)),
      h("dt", {}, "Expired leases"), h("dd", {}, num(s.expired_leases)));
  }
  fill($("storage"), dl);
  const c = snap.compactor;
  const owned = snap.owner && snap.owner.running;
  const quiet = snap.backend === "redis" ? "a server's queue needs none"
    : owned && (snap.workers || []).length ? "working: the owner compacts sealed segments in the background once half their bytes are garbage or 8 are sealed"
    : owned ? "an owner runs but reports no status" : "no owner runs: `walq compact DIR` compacts now";
  fill($("compaction"), c ? Object.entries(c).map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", { class: "err" }, typeof v === "object" ? JSON.stringify(v) : String(v))])
    : [h("dt", {}, "Compactor"), h("dd", { "data-compactor": "ok" }, quiet)]);
  const damage = snap.damage || [];
  fill($("damage"), snap.damage === null ? h("p", { class: "muted" }, "not read for this backend")
    : damage.length ? h("ul", { class: "mono" }, damage.map((d) => h("li", {}, d))) : h("p", { "data-damage": "none" }, "None: every record read back whole."));
}

function renderActions() {
  const head = h("tr", {}, h("th", {}, "When"), h("th", {}, "Who"), h("th", {}, "Action"), h("th", {}, "On"), h("th", {}, "Result"));
  const rows = (snap.actions || []).map((a) => h("tr", {}, h("td", {}, when(a.at)), h("td", {}, a.who), h("td", {}, a.action),
    h("td", { class: "mono" }, a.target), h("td", {}, pill(a.ok ? "ok" : "refused"), " ", a.result)));
  fill($("action-log"), head, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, class: "muted" }, settings.readOnly ? "read-only: actions are off" : "none yet")));
}

// -- lists ------------------------------------------------------------------------------------

function listColumns(state) {
  const cols = [["", (r) => state === "dead" ? h("input", { type: "checkbox", "aria-label": `select job ${r.id}`, checked: selected.has(r.id), onclick: (e) => { e.stopPropagation(); e.target.checked ? selected.add(r.id) : selected.delete(r.id); } }) : null],
    ["Id", (r) => r.id, "num mono"], ["Task", (r) => r.task, "mono"], ["Attempts", (r) => r.attempts, "num"]];
  if (state === "scheduled") cols.push(["Due", (r) => r.due ? `${when(r.due)} (in ${ago(r.due - Date.now() / 1000)})` : "–"]);
  if (state === "running") {
    cols.push(["Worker / process", (r) => r.process ? `${r.worker} / ${r.process}` : (snap && snap.owner && snap.owner.pid) || "–", "mono"],
      ["Running for", (r) => r.running_for !== undefined && r.running_for !== null ? ago(r.running_for) : "–"],
      ["Lease ends", (r) => r.lease_until ? `in ${ago(r.lease_until - Date.now() / 1000)}` : "–"]);
  }
  if (state === "dead") cols.push(["Last error", (r) => (r.error || "").split("\n").filter(Boolean).pop() || "", "err"]);
  cols.push(["Key", (r) => r.key || "", "mono"]);
  if (page_has(state, "created")) cols.push(["Created", (r) => when(r.created)], ["Payload", (r) => r.payload || "", "mono"]);
  return cols;
}

let lastRows = [];
// Whether the rows read carry `field` (a list read from the files has each job's record).
function page_has(state, field) { return lastRows.some((r) => r[field] !== undefined); }

function renderRows(state, page) {
  lastRows = page.rows;
  const cols = listColumns(state);
  const head = h("tr", {}, cols.map(([name, , cls]) => h("th", { class: cls && cls.includes("num") ? "num" : null }, name)));
  const rows = page.rows.map((r) => h("tr", { class: "click", "data-job": r.id, onclick: () => { location.hash = `#job/${r.id}`; } },
    cols.map(([, get, cls]) => h("td", { class: cls || null }, get(r)))));
  fill($("list"), head, rows.length ? rows : h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, page.note || `no ${state} jobs`)));
  const start = listBefore.length * PAGE;
  const total = page.total ?? (snap && snap.jobs ? snap.jobs[state] : null);
  $("list-range").textContent = page.rows.length ? `${num(start + 1)}–${num(start + page.rows.length)}${total !== null && total !== undefined ? ` of ${num(total)}` : ""} (by id)` : "";
  $("list-range").dataset.source = page.source || "";
  listNext = page.next;
  $("prev").disabled = listBefore.length === 0;
  $("next").disabled = page.next === null || page.next === undefined;
}

async function loadList() {
  const titles = { pending: "Pending jobs (oldest first)", scheduled: "Scheduled jobs (by id, with their due time)", running: "Running jobs", dead: "Dead jobs", waiting: "Waiting jobs (for their parents)" };
  $("list-title").textContent = titles[listState];
  const tools = [];
  if (listState === "dead") {
    tools.push(actionButton("Requeue selected", "requeue", selectedIds), " ",
      actionButton("Purge selected", "purge", selectedIds, (a) => `Purge ${a.ids.length} dead job(s)? This cannot be undone.`, true), " ",
      actionButton("Purge all dead", "purge", {}, "Purge every dead job? Their payloads and errors are deleted for good.", true));
  }
  fill($("list-tools"), tools);
  const asked = ++listAsked;  // a slower answer to an earlier request must not overwrite it
  if (!(listState === lastState && listAfter === lastAfter)) {
    // A new page: its buttons wait for it (a second click would page from the old one).
    $("prev").disabled = true;
    $("next").disabled = true;
  }
  lastState = listState; lastAfter = listAfter;
  try {
    const page = await api(`/api/jobs?state=${listState}&after=${listAfter}&limit=${PAGE}`);
    if (asked === listAsked) renderRows(listState, page);
  } catch (e) { if (asked === listAsked) toast(e.message, true); }
}

// -- one job ------------------------------------------------------------------------------------

async function loadJob(id) {
  jobId = id;
  let job;
  try { job = await api(`/api/job/${id}`); } catch (e) {
    $("job-title").textContent = `Job ${id}`;
    fill($("job-fields"), h("dt", {}, "Status"), h("dd", {}, e.message));
    fill($("job-tools")); $("job-error").hidden = true; fill($("job-history"));
    return;
  }
  $("job-title").textContent = `Job ${job.id}`;
  renderJobFields(job);
  const tools = [];
  if (job.status === "dead") {
    tools.push(actionButton("Requeue", "requeue", { ids: [job.id] }),
      actionButton("Purge", "purge", { ids: [job.id] }, `Purge dead job ${job.id}? This cannot be undone.`, true));
  } else if (["pending", "scheduled", "running"].includes(job.status)) {
    tools.push(actionButton("Cancel", "cancel", { ids: [job.id] }, `Cancel job ${job.id}?`, true));
  }
  fill($("job-tools"), tools);
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
  historyNext = null;
  fill($("job-history"));
  fill($("job-attempts"));
  await loadHistory(id, null, job);
}

// A job's fields; its creation time and payload come from its enqueue record where the
// queue's answer lacks them (an owner's or a server's answer does not carry them).
function renderJobFields(job) {
  const run = job.running || {};
  const attemptsText = job.attempts !== undefined && job.attempts !== null ? `${job.attempts}${job.max_attempts ? ` of ${job.max_attempts}` : ""}` : null;
  const fields = [["Status", pill(job.status)], ["Task", job.task], ["Attempts", attemptsText],
    ["Key", job.key], ["Priority", job.priority], ["Created", job.created ? when(job.created) : null], ["Due", job.due ? `${when(job.due)} (in ${ago(job.due - Date.now() / 1000)})` : null],
    ["Worker", run.process ? `worker ${run.worker}, process ${run.process}` : job.worker ? `owner ${job.worker}` : null],
    ["Running for", run.running_for !== undefined && run.running_for !== null ? ago(run.running_for) : null],
    ["Lease ends", job.lease_until ? `in ${ago(job.lease_until - Date.now() / 1000)}` : null],
    ["Payload", job.payload !== undefined ? h("span", { class: "mono" }, job.payload) : null]];
  fill($("job-fields"), fields.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k.toLowerCase() }, v)]));
}

const OUTCOMES = { acked: "ok", failed: "open", dead: "dead", released: "half-open", cancelled: "refused", lost: "stale", running: "running" };

// The job's attempts, drawn by the server from its records (walq/ui/history.py).
function renderAttempts(steps, job, run, note) {
  const head = h("tr", {}, ["Step", "Outcome", "Worker", "Duration", "Details", "Records"].map((t) => h("th", {}, t)));
  const rows = steps.map((st) => {
    let name, outcome = "", worker = "not recorded", duration = "not recorded", detail = [];
    if (st.kind === "attempt") {
      name = `attempt ${st.attempt ?? "?"}`;
      let out = st.outcome;
      if (out === "running" && job.status !== "running") { out = "lost"; detail.push("no outcome recorded yet: its owner stopped"); }
      outcome = pill(out, OUTCOMES[out] || "");
      if (out === "running" && run.process) {
        worker = `worker ${run.worker}, process ${run.process}`;
        duration = run.running_for !== undefined && run.running_for !== null ? `${ago(run.running_for)} so far` : "running";
      }
      const rep = st.reported;  // its attempt record in the log, or else its worker's report
      if (rep) {
        const proc = rep.process ? `process ${rep.process}` : (rep.source === "log" ? "not started" : "process ?");
        worker = `worker ${rep.worker ?? "?"}${rep.host ? ` on ${rep.host}` : ""}, ${proc}`;
        const span = rep.started ? `started ${when(rep.started)}` : `ended ${when(rep.ended)}`;
        // A job handed back before any process took it ran for no time: say when, not 0 s.
        duration = !rep.process && rep.source === "log"
          ? `handed back ${when(rep.started || rep.ended)}`
          : `${Number(rep.seconds).toFixed(rep.seconds < 10 ? 2 : 0)} s, ${span}`;
        if (rep.cause && !st.summary) detail.push(rep.cause);
      }
      if (st.summary) detail.push(st.summary);
      if (st.retry_at) detail.push(`retry at ${when(st.retry_at)}`);
      if (st.note) detail.push(st.note);
    } else if (st.kind === "created") {
      name = st.compacted ? "compacted" : "enqueued";
      worker = ""; duration = "";
      if (st.created) detail.push(`at ${when(st.created)}`);
      if (st.task) detail.push(st.task);
      if (st.due) detail.push(`due ${when(st.due)}`);
      if (st.key) detail.push(`key ${st.key}`);
      if (st.compacted) detail.push(`${st.attempts || 0} attempt(s) before (a compaction keeps no older records)`);
      if (st.after) detail.push(`after job(s) ${st.after.join(", ")}`);
    } else {
      name = st.kind; worker = ""; duration = "";
    }
    const where = [st.at, st.ended_at].filter(Boolean).join(" → ");
    return h("tr", { "data-step": st.kind, "data-attempt": st.attempt ?? null, "data-outcome": st.outcome || null },
      h("td", {}, name), h("td", {}, outcome), h("td", { class: "muted" }, worker), h("td", { class: "muted" }, duration),
      h("td", { class: st.error ? "err" : "" }, detail.join(" · ")), h("td", { class: "mono muted" }, where));
  });
  fill($("job-attempts"), head, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, note ? "no attempt reported by a worker since the dashboard started" : "no records")));
}

async function loadHistory(id, after, job) {
  let page;
  try {
    page = await api(`/api/job/${id}/history${after ? `?after=${encodeURIComponent(after)}` : ""}`);
  } catch (e) { toast(`history: ${e.message}`, true); return; }
  if (!after && job) {
    renderAttempts(page.attempts || [], job, job.running || {}, page.note);
    const made = page.rows.find((r) => (r.type === "enqueue" || r.type === "job" || r.type === "after") && r.job === id);
    if (made && job.payload === undefined) {
      renderJobFields({ ...job, created: job.created ?? made.created, payload: made.payload });
    }
  }
  const table = $("job-history");
  if (!after) {
    table.append(h("tr", {}, ["Position", "Record", "Attempt", "Details"].map((t) => h("th", {}, t))));
  }
  for (const r of page.rows) {
    const detail = [];
    const at = r.jobs ? r.jobs.indexOf(id) : -1;  // a record about several jobs: this one's place
    const task = r.task || (at >= 0 && r.tasks ? r.tasks[at] : null);
    const attempt = r.attempt ?? r.counted ?? (at >= 0 ? (r.attempts || r.counts || [])[at] : undefined);
    if (task) detail.push(task);
    if (r.state) detail.push(`state ${r.state}`);
    if (r.due) detail.push(`${r.type === "fail" ? "retry" : "due"} at ${when(r.due)}`);
    if (r.dead) detail.push("dead");
    if (r.error) detail.push((r.error.split("\n").filter(Boolean).pop() || ""));
    if (r.created) detail.push(`created ${when(r.created)}`);
    if (r.jobs && r.jobs.length > 1) detail.push(`with ${r.jobs.length - 1} other job(s)`);
    table.append(h("tr", {}, h("td", { class: "mono" }, `${r.seq}:${r.offset}`), h("td", {}, r.type),
      h("td", { class: "num" }, attempt ?? ""), h("td", { class: r.error ? "err" : "" }, detail.join(" · "))));
  }
  if (!page.rows.length && !after) table.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, page.note || "no records (a compaction keeps only live jobs' records)")));
  historyNext = page.next;
  $("history-more").hidden = !historyNext;
}

// -- navigation -------------------------------------------------------------------------------

function show(name) {
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
}

async function route() {
  const hash = location.hash.replace(/^#/, "") || "overview";
  const [first, second] = hash.split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("on", a.dataset.view === first);
  if (first === "job" && second) {
    view = "job"; show("job"); await loadJob(Number(second));
  } else if (STATES.includes(first)) {
    view = "list"; if (listState !== first) { listAfter = 0; listBefore = []; selected.clear(); }
    listState = first; show("list"); await loadList();
  } else if (["workers", "storage", "actions"].includes(first)) {
    view = first; show(first);
  } else {
    view = "overview"; show("overview");
  }
}

for (const b of document.querySelectorAll("#chart-span button")) {
  b.addEventListener("click", () => { chartMinutes = Number(b.dataset.minutes); if (snap && !snap.error) renderCharts(); });
}
$("prev").addEventListener("click", () => { if (listBefore.length) { listAfter = listBefore.pop(); loadList(); } });
$("next").addEventListener("click", () => { if (listNext !== null && listNext !== undefined) { listBefore.push(listAfter); listAfter = listNext; loadList(); } });
$("history-more").addEventListener("click", () => { if (historyNext) loadHistory(jobId, historyNext, null); });
$("find").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = $("find-q").value.trim();
  if (!q) return;
  try { const found = await api(`/api/find?q=${encodeURIComponent(q)}`); location.hash = `#job/${found.id}`; } catch (err) { toast(err.message, true); }
});
window.addEventListener("hashchange", route);

let ticks = 0;
async function tick() {
  try {
    if (!document.hidden) {
      await refresh();
      ticks += 1;
      if (view === "list" && ticks % 3 === 0) await loadList();
    }
  } finally {
    setTimeout(tick, POLL_MS);  // a failed look must not stop the next
  }
}

refresh().then(route).then(() => setTimeout(tick, POLL_MS));
