// vmdump web UI: plain JavaScript, no framework, no build step. Talks only to /api/v1 with
// the session cookie; every changing request carries the session's CSRF token.
"use strict";

const S = { csrf: null, user: null, readOnly: false, storages: [], page: "guests", task: null, source: null, backups: [] };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "text") e.textContent = v;
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && S.csrf) headers["X-CSRF-Token"] = S.csrf;
  const r = await fetch("/api/v1" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== "/login") { showLogin(); }
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

const fmtSize = (n) => {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let x = n;
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return (i ? x.toFixed(2) : x) + " " + u[i];
};
const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const fileOf = (volid) => volid.slice(volid.indexOf("/") + 1);

// ---- login and navigation ----------------------------------------------------------------

function showLogin() {
  S.csrf = null;
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("#page-login").hidden = false;
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#whoami").textContent = "";
}

async function login(ev) {
  ev.preventDefault();
  $("#login-error").textContent = "";
  try {
    const r = await api("POST", "/login", { token: $("#login-token").value });
    $("#login-token").value = "";
    startSession(r);
  } catch (e) {
    $("#login-error").textContent = e.message;
  }
}

function startSession(r) {
  S.csrf = r.csrf; S.user = r.user; S.readOnly = r.read_only;
  sessionStorage.setItem("vmdump-csrf", JSON.stringify(r));
  $("#page-login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  $("#whoami").textContent = r.user + (r.read_only ? " (read-only)" : "");
  document.body.classList.toggle("read-only", r.read_only);
  loadStorages().then(() => show("guests"));
}

async function logout() {
  try { await api("POST", "/logout"); } catch (_) { /* already gone */ }
  sessionStorage.removeItem("vmdump-csrf");
  showLogin();
}

function show(page) {
  S.page = page;
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + page;
  for (const b of document.querySelectorAll("#nav button")) b.classList.toggle("active", b.dataset.page === page);
  ({ guests: loadGuests, backups: loadBackups, jobs: loadJobs, prune: () => {}, tasks: loadTasks })[page]();
}

async function loadStorages() {
  S.storages = await api("GET", "/storages");
  const backup = S.storages.filter((s) => s.backup && !s.disabled);
  for (const id of ["#storage-select", "#backup-storage", "#job-storage", "#prune-storage"]) {
    const sel = $(id); sel.replaceChildren();
    for (const s of backup) sel.append(el("option", { value: s.id, text: s.id }));
  }
  const rs = $("#restore-storage"); rs.replaceChildren(el("option", { value: "", text: "(as backed up)" }));
  for (const s of S.storages.filter((x) => x.content.includes("images") || x.content.includes("rootdir"))) {
    rs.append(el("option", { value: s.id, text: s.id }));
  }
}

// ---- guests ------------------------------------------------------------------------------

async function loadGuests() {
  const guests = await api("GET", "/guests");
  const tb = $("#guests-table tbody"); tb.replaceChildren();
  for (const g of guests) {
    const btn = el("button", { class: "backup-now", "data-vmid": g.vmid, text: "Back up now", disabled: S.readOnly });
    btn.addEventListener("click", () => openBackup(g.vmid));
    tb.append(el("tr", { "data-vmid": g.vmid },
      el("td", { text: g.vmid }), el("td", { text: g.type }), el("td", { text: g.name || "" }),
      el("td", { class: "status-" + (g.status === "running" ? "ok" : "stopped"), text: g.status }),
      el("td", { text: g.last_backup ? fmtTime(g.last_backup.time) : "never" }),
      el("td", { text: g.last_backup ? fmtSize(g.last_backup.size) : "" }),
      el("td", {}, btn)));
  }
}

function openBackup(vmid) {
  $("#backup-vmid").textContent = vmid;
  $("#backup-dialog").dataset.vmid = vmid;
  $("#backup-dialog").showModal();
}

async function startBackup() {
  const vmid = $("#backup-dialog").dataset.vmid;
  const body = { storage: $("#backup-storage").value, mode: $("#backup-mode").value, compress: $("#backup-compress").value };
  if ($("#backup-notes").value) body["notes-template"] = $("#backup-notes").value;
  if ($("#backup-protected").checked) body.protected = true;
  try {
    const r = await api("POST", `/guests/${vmid}/backup`, body);
    follow(r.task, `backup of ${vmid}`);
  } catch (e) { alert(e.message); }
}

// ---- tasks: live progress and log -------------------------------------------------------

function follow(upid, title) {
  if (S.source) S.source.close();
  S.task = upid;
  $("#task-panel").hidden = false;
  $("#task-title").textContent = title;
  $("#task-progress").value = 0;
  $("#task-percent").textContent = "0%";
  $("#task-status").textContent = "running";
  $("#task-status").className = "status status-running";
  $("#task-log").textContent = "";
  $("#task-panel").dataset.upid = upid;
  $("#task-panel").dataset.status = "running";
  const src = new EventSource("/api/v1/tasks/" + encodeURIComponent(upid) + "/events");
  S.source = src;
  src.addEventListener("log", (ev) => {
    const log = $("#task-log");
    log.textContent += ev.data + "\n";
    log.scrollTop = log.scrollHeight;
  });
  src.addEventListener("progress", (ev) => {
    const p = JSON.parse(ev.data);
    if (p.total > 0) setPercent(Math.floor((100 * p.transferred) / p.total));
  });
  src.addEventListener("end", (ev) => {
    src.close();
    const t = JSON.parse(ev.data);
    if (t.status === "ok") setPercent(100);
    $("#task-status").textContent = t.status === "ok" ? "OK" : "error: " + (t.exitstatus || "");
    $("#task-status").className = "status status-" + t.status;
    $("#task-panel").dataset.status = t.status;
    if (S.page === "guests") loadGuests();
    if (S.page === "backups") loadBackups();
    if (S.page === "tasks") loadTasks();
  });
}

function setPercent(p) {
  const v = Math.max(0, Math.min(100, p));
  $("#task-progress").value = v;
  $("#task-percent").textContent = v + "%";
}

async function loadTasks() {
  const tasks = await api("GET", "/tasks?limit=200");
  const tb = $("#tasks-table tbody"); tb.replaceChildren();
  for (const t of tasks) {
    const row = el("tr", { "data-upid": t.upid },
      el("td", { text: fmtTime(t.starttime) }), el("td", { text: fmtTime(t.endtime) }),
      el("td", { text: t.type }), el("td", { text: t.id }), el("td", { text: t.user }),
      el("td", { class: "status-" + t.status, text: t.status === "error" ? "error: " + t.exitstatus : t.status }));
    row.addEventListener("click", () => follow(t.upid, `${t.type} ${t.id}`));
    tb.append(row);
  }
}

// ---- backups -----------------------------------------------------------------------------

async function loadBackups() {
  const sid = $("#storage-select").value;
  if (!sid) return;
  const st = S.storages.find((s) => s.id === sid);
  $("#storage-usage").textContent = st && st.total ? `${fmtSize(st.used)} of ${fmtSize(st.total)} used` : "";
  const list = await api("GET", `/storages/${encodeURIComponent(sid)}/backups`);
  S.backups = list;
  list.sort((a, b) => b.time - a.time);
  const tb = $("#backups-table tbody"); tb.replaceChildren();
  for (const b of list.slice(0, 500)) {
    const name = fileOf(b.volid);
    const notes = el("input", { value: b.notes || "", class: "notes", disabled: S.readOnly });
    notes.addEventListener("change", () => changeBackup(sid, name, { notes: notes.value }));
    const prot = el("input", { type: "checkbox", checked: b.protected, class: "protect", disabled: S.readOnly });
    prot.addEventListener("change", () => changeBackup(sid, name, { protected: prot.checked }));
    const restore = el("button", { class: "restore", "data-name": name, text: "Restore", disabled: S.readOnly });
    restore.addEventListener("click", () => openRestore(sid, name, b.vmid));
    const remove = el("button", { class: "remove", text: "Remove", disabled: S.readOnly || b.protected });
    remove.addEventListener("click", async () => {
      if (!confirm(`Remove ${b.volid}?`)) return;
      try { await api("DELETE", `/storages/${encodeURIComponent(sid)}/backups/${encodeURIComponent(name)}`); } catch (e) { alert(e.message); }
      loadBackups();
    });
    tb.append(el("tr", { "data-volid": b.volid },
      el("td", { class: "wrap", text: name }), el("td", { text: b.vmid }), el("td", { text: fmtTime(b.time) }),
      el("td", { text: fmtSize(b.size) }), el("td", {}, notes), el("td", {}, prot), el("td", {}, restore, " ", remove)));
  }
  drawChart(list);
}

async function changeBackup(sid, name, change) {
  try { await api("PUT", `/storages/${encodeURIComponent(sid)}/backups/${encodeURIComponent(name)}`, change); } catch (e) { alert(e.message); }
  loadBackups();
}

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

// Backup sizes over time, one line per guest, as an inline SVG.
function drawChart(list) {
  const box = $("#size-chart"); box.replaceChildren();
  if (!list.length) { box.textContent = "no backups"; return; }
  const W = 900, H = 220, L = 70, B = 30, T = 10, R = 10;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("id", "size-chart-svg");
  const t0 = Math.min(...list.map((b) => b.time)), t1 = Math.max(...list.map((b) => b.time));
  const smax = Math.max(...list.map((b) => b.size), 1);
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (s) => H - B - (s / smax) * (H - B - T);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#9ca3af" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#9ca3af" });
  add("text", { x: 4, y: T + 10 }, fmtSize(smax));
  add("text", { x: 4, y: H - B }, "0");
  add("text", { x: L, y: H - 8 }, fmtTime(t0));
  add("text", { x: W - R - 150, y: H - 8 }, fmtTime(t1));
  const groups = new Map();
  for (const b of list) { if (!groups.has(b.vmid)) groups.set(b.vmid, []); groups.get(b.vmid).push(b); }
  const legend = el("div", { class: "legend" });
  let i = 0;
  for (const [vmid, bs] of [...groups.entries()].sort((a, b) => a[0] - b[0])) {
    const color = COLORS[i++ % COLORS.length];
    bs.sort((a, b) => a.time - b.time);
    const pts = bs.slice(-200).map((b) => `${x(b.time).toFixed(1)},${y(b.size).toFixed(1)}`).join(" ");
    add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, "data-vmid": vmid });
    for (const b of bs.slice(-200)) add("circle", { cx: x(b.time), cy: y(b.size), r: 3, fill: color });
    const sw = el("span", { class: "swatch" }); sw.style.background = color;
    legend.append(el("span", {}, sw, `VM ${vmid}`));
  }
  box.append(svg, legend);
}

function openRestore(sid, name, vmid) {
  const d = $("#restore-dialog");
  d.dataset.storage = sid; d.dataset.name = name;
  $("#restore-name").textContent = name;
  $("#restore-vmid").value = vmid;
  d.showModal();
}

async function startRestore() {
  const d = $("#restore-dialog");
  const body = {
    vmid: Number($("#restore-vmid").value),
    force: $("#restore-force").checked,
    unique: $("#restore-unique").checked,
    start: $("#restore-start").checked,
  };
  if ($("#restore-storage").value) body.storage = $("#restore-storage").value;
  try {
    const r = await api("POST", `/storages/${encodeURIComponent(d.dataset.storage)}/backups/${encodeURIComponent(d.dataset.name)}/restore`, body);
    follow(r.task, `restore to ${body.vmid}`);
  } catch (e) { alert(e.message); }
}

// ---- jobs --------------------------------------------------------------------------------

async function loadJobs() {
  const jobs = await api("GET", "/jobs");
  const tb = $("#jobs-table tbody"); tb.replaceChildren();
  for (const j of jobs) {
    const edit = el("button", { text: "Edit", disabled: S.readOnly });
    edit.addEventListener("click", () => editJob(j));
    const run = el("button", { text: "Run now", disabled: S.readOnly });
    run.addEventListener("click", async () => {
      try { const r = await api("POST", `/jobs/${encodeURIComponent(j.id)}/run`); follow(r.task, `job ${j.id}`); } catch (e) { alert(e.message); }
    });
    const del = el("button", { text: "Delete", disabled: S.readOnly });
    del.addEventListener("click", async () => {
      if (!confirm(`Delete job ${j.id}?`)) return;
      try { await api("DELETE", `/jobs/${encodeURIComponent(j.id)}`); } catch (e) { alert(e.message); }
      loadJobs();
    });
    tb.append(el("tr", { "data-job": j.id },
      el("td", { text: j.id }), el("td", { text: j.enabled ? "yes" : "no" }), el("td", { text: j.schedule }),
      el("td", { text: j.all ? (j.exclude.length ? "all except " + j.exclude.join(",") : "all") : j.vmid.join(",") }),
      el("td", { text: j.options.storage || "" }),
      el("td", { text: j.last_run ? `${fmtTime(j.last_run)} (${j.last_result || ""})` : "" }),
      el("td", { text: fmtTime(j.next_run) }), el("td", {}, edit, " ", run, " ", del)));
  }
}

function editJob(j) {
  $("#job-form-title").textContent = "Edit job " + j.id;
  $("#job-form").dataset.editing = j.id;
  $("#job-id").value = j.id; $("#job-id").disabled = true;
  $("#job-schedule").value = j.schedule;
  $("#job-vmid").value = j.vmid.join(",");
  $("#job-all").checked = j.all;
  $("#job-storage").value = j.options.storage || "";
  $("#job-mode").value = j.options.mode || "snapshot";
  $("#job-compress").value = j.options.compress || "zstd";
  $("#job-prune").value = j.options["prune-backups"] || "";
  $("#job-enabled").checked = j.enabled;
  $("#job-comment").value = j.comment || "";
  nextRuns();
}

function newJob() {
  $("#job-form-title").textContent = "New job";
  delete $("#job-form").dataset.editing;
  $("#job-form").reset();
  $("#job-id").disabled = false;
  nextRuns();
}

let nextTimer = null;
function nextRuns() {
  clearTimeout(nextTimer);
  nextTimer = setTimeout(async () => {
    const s = $("#job-schedule").value;
    try {
      const times = await api("GET", "/schedule/next?count=5&schedule=" + encodeURIComponent(s));
      $("#job-next").textContent = times.map(fmtTime).join("; ");
    } catch (e) { $("#job-next").textContent = e.message; }
  }, 200);
}

async function saveJob(ev) {
  ev.preventDefault();
  $("#job-error").textContent = "";
  const body = {
    schedule: $("#job-schedule").value, storage: $("#job-storage").value, mode: $("#job-mode").value,
    compress: $("#job-compress").value, enabled: $("#job-enabled").checked,
  };
  if ($("#job-all").checked) body.all = true; else body.vmid = $("#job-vmid").value;
  if ($("#job-prune").value) body["prune-backups"] = $("#job-prune").value;
  if ($("#job-comment").value) body.comment = $("#job-comment").value;
  const editing = $("#job-form").dataset.editing;
  try {
    if (editing) {
      const del = [];
      if (!$("#job-prune").value) del.push("prune-backups");
      if (!$("#job-comment").value) del.push("comment");
      if ($("#job-all").checked) del.push("vmid"); else del.push("all");
      body.delete = del.join(",");
      await api("PUT", `/jobs/${encodeURIComponent(editing)}`, body);
    } else {
      body.id = $("#job-id").value;
      await api("POST", "/jobs", body);
    }
    newJob();
    loadJobs();
  } catch (e) { $("#job-error").textContent = e.message; }
}

// ---- retention preview -------------------------------------------------------------------

function pruneParams() {
  const p = new URLSearchParams();
  for (const k of ["last", "hourly", "daily", "weekly", "monthly", "yearly"]) {
    const v = $("#prune-keep-" + k).value;
    if (v !== "") p.set("keep-" + k, v);
  }
  if ($("#prune-vmid").value) p.set("vmid", $("#prune-vmid").value);
  return p;
}

async function previewPrune(ev) {
  ev.preventDefault();
  $("#prune-error").textContent = "";
  const sid = $("#prune-storage").value;
  try {
    const plan = await api("GET", `/storages/${encodeURIComponent(sid)}/prune?` + pruneParams());
    const tb = $("#prune-table tbody"); tb.replaceChildren();
    for (const e of plan) {
      tb.append(el("tr", { class: e.mark, "data-volid": e.volid },
        el("td", { class: "wrap", text: fileOf(e.volid) }), el("td", { text: e.vmid }), el("td", { text: fmtTime(e.time) }),
        el("td", { text: e.mark }), el("td", { text: e.rule || "" })));
    }
    const n = plan.filter((e) => e.mark === "remove").length;
    $("#prune-summary").textContent = `${n} of ${plan.length} backups would be removed`;
    $("#prune-apply").disabled = S.readOnly || n === 0;
  } catch (e) { $("#prune-error").textContent = e.message; }
}

async function applyPrune() {
  const sid = $("#prune-storage").value;
  const body = Object.fromEntries(pruneParams());
  if (!confirm("Remove the backups marked 'remove'?")) return;
  try {
    const r = await api("POST", `/storages/${encodeURIComponent(sid)}/prune`, body);
    $("#prune-apply").disabled = true;
    follow(r.task, `prune ${sid}`);
  } catch (e) { $("#prune-error").textContent = e.message; }
}

// ---- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  for (const b of document.querySelectorAll("#nav button")) b.addEventListener("click", () => show(b.dataset.page));
  $("#storage-select").addEventListener("change", loadBackups);
  $("#backup-form").addEventListener("submit", (ev) => { if (ev.submitter && ev.submitter.value === "start") startBackup(); });
  $("#restore-form").addEventListener("submit", (ev) => { if (ev.submitter && ev.submitter.value === "go") startRestore(); });
  $("#task-close").addEventListener("click", () => { if (S.source) S.source.close(); $("#task-panel").hidden = true; });
  $("#task-stop").addEventListener("click", async () => {
    try { await api("DELETE", "/tasks/" + encodeURIComponent(S.task)); } catch (e) { alert(e.message); }
  });
  $("#job-form").addEventListener("submit", saveJob);
  $("#job-new").addEventListener("click", newJob);
  $("#job-schedule").addEventListener("input", nextRuns);
  $("#prune-form").addEventListener("submit", previewPrune);
  $("#prune-apply").addEventListener("click", applyPrune);
  // A reload keeps the session (the cookie) and its CSRF token (this tab's storage).
  const saved = sessionStorage.getItem("vmdump-csrf");
  if (saved) {
    const r = JSON.parse(saved);
    S.csrf = r.csrf;
    api("GET", "/me").then(() => startSession(r)).catch(() => showLogin());
  } else {
    showLogin();
  }
  nextRuns();
});
