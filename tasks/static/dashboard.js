// The hospital-refresh dashboard: plain JavaScript, no build step, no third-party code.
//
// The task list is polled (GET tasks, every second); the selected task's progress comes as
// Server-Sent Events read with fetch() streaming (EventSource cannot send the Authorization
// header), and its tree is fetched again as it grows. Every URL is relative to the page, so
// the dashboard also works when the app is mounted under a prefix (/refresh/).
"use strict";

(() => {
  const TOKEN_KEY = "hospital-refresh-token";
  const LEAF_DEPTH = 4; // province / city / district / hospital: hospitals are leaves
  const $ = (id) => document.getElementById(id);

  const rows = new Map(); // task id -> the row's elements
  const openPaths = new Set(); // tree nodes the user opened, kept open across refreshes
  let selected = null; // the task shown in the detail panel
  let stream = null; // AbortController of the selected task's progress stream
  let treeTimer = null;
  let treeDue = false;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const url = (path) => new URL(path, document.baseURI);
  const taskUrl = (id, rest) => `tasks/${encodeURIComponent(id)}${rest ? "/" + rest : ""}`;

  function headers(extra) {
    const all = Object.assign({}, extra);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) all.Authorization = `Bearer ${token}`;
    return all;
  }

  async function api(path, options = {}) {
    const res = await fetch(url(path), { ...options, headers: headers(options.headers) });
    if (res.status === 401) {
      askToken();
      throw new ApiError(401, "this service needs a token");
    }
    const type = res.headers.get("content-type") || "";
    const body = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) {
      const detail = body && body.detail !== undefined ? body.detail : body;
      throw new ApiError(res.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return body;
  }

  function showMessage(text, isError = false) {
    const el = $("message");
    el.textContent = text;
    el.className = isError ? "error" : "hint";
  }

  // --- the token ----------------------------------------------------------------------------

  function askToken() {
    $("token-form").hidden = false;
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("token-form").hidden = true;
    refreshList(false);
    if (selected) select(selected);
  });

  // --- the task list ------------------------------------------------------------------------

  function cell(row, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function button(label, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.action = action;
    return b;
  }

  function makeRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.taskId = id;
    const r = { tr, updatedAt: -1 };
    cell(tr, "id").textContent = id;
    r.type = cell(tr);
    r.target = cell(tr);
    r.status = document.createElement("span");
    cell(tr).append(r.status);
    const progress = cell(tr, "progress");
    const bar = document.createElement("div");
    bar.className = "bar";
    r.fill = document.createElement("div");
    r.fill.className = "fill";
    bar.append(r.fill);
    r.pct = document.createElement("span");
    r.pct.className = "pct";
    progress.append(bar, r.pct);
    r.step = cell(tr, "step");
    const actions = cell(tr, "actions");
    r.start = button("Start", "start");
    r.cancel = button("Cancel", "cancel");
    r.resume = button("Resume", "resume");
    actions.append(r.start, r.cancel, r.resume);
    rows.set(id, r);
    return r;
  }

  // `at` is when the status was known: a list answer is as old as its request, and must not
  // undo a newer status that came meanwhile from the progress stream or a button's answer.
  function updateRow(s, at = performance.now()) {
    const r = rows.get(s.task_id);
    if (!r || r.updatedAt > at) return;
    r.updatedAt = at;
    r.tr.className = `${s.status}${s.task_id === selected ? " selected" : ""}`;
    r.type.textContent = s.task_type;
    r.target.textContent = s.target || "全国";
    r.status.textContent = s.interrupted ? `${s.status} (interrupted)` : s.status;
    r.status.className = `status ${s.status}`;
    r.fill.style.width = `${s.progress}%`;
    r.pct.textContent = `${s.progress}%`;
    r.step.textContent = s.current_step || "";
    r.step.title = s.error || s.current_step || "";
    r.start.hidden = s.status !== "PENDING";
    r.cancel.hidden = !(s.status === "PENDING" || s.status === "RUNNING");
    r.resume.hidden = !(s.status === "FAILED" || (s.status === "RUNNING" && s.interrupted));
  }

  function renderList(tasks, askedAt) {
    const body = $("task-rows");
    const seen = new Set();
    for (const s of tasks) {
      seen.add(s.task_id);
      if (!rows.has(s.task_id)) body.prepend(makeRow(s.task_id).tr); // newest first
      updateRow(s, askedAt);
    }
    for (const [id, r] of rows) {
      if (!seen.has(id)) {
        r.tr.remove();
        rows.delete(id);
      }
    }
    $("no-tasks").hidden = rows.size > 0;
  }

  async function refreshList(again = true) {
    try {
      const askedAt = performance.now();
      renderList(await api("tasks"), askedAt);
    } catch (err) {
      if (err.status !== 401) showMessage(`cannot list the tasks: ${err.message}`, true);
    } finally {
      if (again) setTimeout(refreshList, 1000);
    }
  }

  $("task-rows").addEventListener("click", async (event) => {
    const tr = event.target.closest("tr[data-task-id]");
    if (!tr) return;
    const id = tr.dataset.taskId;
    const action = event.target.dataset ? event.target.dataset.action : undefined;
    if (!action) {
      select(id);
      return;
    }
    try {
      const askedAt = performance.now();
      updateRow(await api(taskUrl(id, action), { method: "POST" }), askedAt);
      showMessage(`${action}: ${id}`);
      select(id);
    } catch (err) {
      showMessage(`${action} ${id}: ${err.message}`, true);
    }
  });

  // --- creating a task ----------------------------------------------------------------------

  $("task-type").addEventListener("change", () => {
    $("target").disabled = $("task-type").value === "full";
  });

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { task_type: $("task-type").value };
    if (body.task_type === "province") body.target = $("target").value.trim();
    try {
      const created = await api("tasks", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      showMessage(`created ${created.task_id}: press Start to run it`);
      await refreshList(false);
      select(created.task_id);
    } catch (err) {
      showMessage(`not created: ${err.message}`, true);
    }
  });

  // --- the selected task: live progress and its tree ----------------------------------------

  function showStatus(s) {
    if (s.task_id !== selected) return;
    $("detail-id").textContent = s.task_id;
    $("detail-status").textContent = s.status;
    $("detail-status").className = `status ${s.status}`;
    $("detail-fill").style.width = `${s.progress}%`;
    $("detail-fill").className = `fill ${s.status}`;
    $("detail-pct").textContent = `${s.progress}%`;
    $("detail-step").textContent = s.current_step || "";
    const c = s.counts;
    $("detail-counts").textContent =
      `${c.provinces} provinces · ${c.cities} cities · ${c.districts} districts · ` +
      `${c.hospitals} hospitals · ${s.retries} retries`;
    $("detail-error").textContent = s.error || "";
  }

  function select(id) {
    if (stream) stream.abort();
    if (id !== selected) {
      openPaths.clear();
      $("tree").replaceChildren();
    }
    selected = id;
    for (const [other, r] of rows) r.tr.classList.toggle("selected", other === id);
    $("detail").hidden = false;
    $("detail-id").textContent = id;
    followProgress(id);
    loadTree(id);
  }

  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // a keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    return data.length ? { name, data: JSON.parse(data.join("\n")) } : null;
  }

  async function followProgress(id) {
    const control = new AbortController();
    stream = control;
    while (selected === id && !control.signal.aborted) {
      let ended = false;
      try {
        const res = await fetch(url(taskUrl(id, "progress")), {
          headers: headers({ Accept: "text/event-stream" }),
          signal: control.signal,
          cache: "no-store",
        });
        if (res.status === 401) {
          askToken();
          return;
        }
        if (!res.ok || !res.body) throw new ApiError(res.status, "no progress stream");
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = parseEvent(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (!event) continue;
            if (event.name === "status") {
              showStatus(event.data);
              updateRow(event.data);
              scheduleTree(id);
            } else if (event.name === "end") {
              ended = true;
            }
          }
        }
      } catch (err) {
        if (control.signal.aborted) return;
      }
      if (ended) {
        loadTree(id);
        return;
      }
      await sleep(1000); // the stream broke off (server restart?): follow it again
    }
  }

  function scheduleTree(id) {
    if (treeTimer) {
      treeDue = true;
      return;
    }
    loadTree(id);
    treeTimer = setTimeout(() => {
      treeTimer = null;
      if (treeDue && selected === id) {
        treeDue = false;
        scheduleTree(id);
      }
    }, 1000);
  }

  async function loadTree(id) {
    try {
      const tree = await api(taskUrl(id, "tree"));
      if (selected === id) renderTree(tree);
    } catch (err) {
      if (err.status !== 401 && selected === id) $("tree").textContent = err.message;
    }
  }

  function renderTree(tree) {
    const root = $("tree");
    const top = document.createElement("div");
    top.className = "hint";
    const names = Object.keys(tree.children);
    top.textContent =
      `${tree.root.length ? tree.root.join(" / ") : "全国"}: ${names.length} fetched below, ` +
      `${tree.frontier.length} still to fetch, ${Object.keys(tree.failed).length} failed`;
    const nodes = names.map((name) =>
      treeNode(name, tree.children[name], tree.root.concat(name), tree.failed),
    );
    root.replaceChildren(top, ...nodes);
  }

  function treeNode(name, value, path, failed) {
    const key = path.join(" / ");
    if (value === null || value === undefined) {
      const div = document.createElement("div");
      div.className = "leaf";
      div.textContent = name;
      if (path.length < LEAF_DEPTH) {
        div.classList.add("pending");
        div.textContent = failed[key] ? `${name} (failed: ${failed[key]})` : `${name} …`;
      }
      return div;
    }
    const details = document.createElement("details");
    details.dataset.path = key;
    const summary = document.createElement("summary");
    summary.textContent = `${name} (${Object.keys(value).length})`;
    details.append(summary);
    let filled = false;
    const fill = () => {
      if (filled) return;
      filled = true;
      for (const [child, below] of Object.entries(value)) {
        details.append(treeNode(child, below, path.concat(child), failed));
      }
    };
    details.addEventListener("toggle", () => {
      if (details.open) {
        openPaths.add(key);
        fill();
      } else {
        openPaths.delete(key);
      }
    });
    if (openPaths.has(key)) {
      fill();
      details.open = true;
    }
    return details;
  }

  // --- health -------------------------------------------------------------------------------

  async function refreshHealth() {
    const el = $("health");
    try {
      const res = await fetch(url("healthz"), { cache: "no-store" });
      const health = await res.json();
      el.textContent = health.status === "ok" ? "healthy" : `unavailable: ${health.problems.join("; ")}`;
      el.className = `health ${health.status === "ok" ? "ok" : "bad"}`;
    } catch (err) {
      el.textContent = "unreachable";
      el.className = "health bad";
    } finally {
      setTimeout(refreshHealth, 5000);
    }
  }

  refreshList();
  refreshHealth();
})();
