// The queue: every job of the team, filtered and paged, rows updated in place from the
// events stream (or by polling while it is down).
"use strict";

(() => {
  const { api, el, setText, fmt, spec, me } = RF;
  const body = document.getElementById("job-rows");
  const form = document.getElementById("filters");
  const PER_PAGE = 25;
  const rows = new Map(); // job id -> {row, job, key}
  const batchRows = new Map(); // batch id -> row
  let page = 1;
  let total = 0;
  let searched = null; // set when a prompt search left older jobs unread
  let generation = 0;
  let lastRefresh = -Infinity;

  // -- filters (in the address, so a filtered queue can be bookmarked) -------------------
  const FILTERS = ["scope", "status", "owner", "model", "hardware", "q"];
  function fromAddress() {
    const q = RF.query();
    for (const name of FILTERS) if (form.elements[name]) form.elements[name].value = q[name] || "";
    page = Math.max(1, parseInt(q.page, 10) || 1);
    return q;
  }
  const initial = fromAddress();

  function filters() {
    const f = {};
    for (const name of FILTERS) f[name] = form.elements[name].value.trim();
    return f;
  }

  function params(f) {
    const p = new URLSearchParams({ page, per_page: PER_PAGE, limit: 500 });
    const owner = f.scope === "me" ? "me" : f.owner;
    if (owner) p.set("owner", owner);
    for (const name of ["status", "model", "hardware", "q"]) if (f[name]) p.set(name, f[name]);
    return p;
  }

  // For a server without the filter parameters: the same filters, applied here.
  function matches(job, f) {
    const owner = f.scope === "me" ? me.account : f.owner;
    if (owner && job.owner !== owner) return false;
    if (f.status && job.status !== f.status) return false;
    if (f.model && spec.model(job) !== f.model && (job.spec || {}).vae !== f.model) return false;
    if (f.hardware && (job.spec || {}).hardware !== f.hardware) return false;
    if (f.q && !spec.prompt(job).toLowerCase().includes(f.q.toLowerCase())) return false;
    return true;
  }

  async function refresh() {
    lastRefresh = Date.now();
    const mine = ++generation;
    const f = filters();
    const { ok, body: answer } = await api(`/jobs?${params(f)}`);
    if (!ok || mine !== generation) return; // a newer refresh is on its way
    let jobs = answer.jobs || [];
    if (answer.total === undefined) {
      jobs = jobs.filter((j) => matches(j, f));
      total = jobs.length;
      jobs = jobs.slice((page - 1) * PER_PAGE, page * PER_PAGE);
    } else {
      total = answer.total;
    }
    searched = answer.truncated ? answer.searched : null;
    const last = Math.max(1, Math.ceil(total / PER_PAGE));
    if (page > last) { // past the end (its jobs deleted, say): the last page there is now
      page = last;
      RF.setQuery({ ...f, page: page > 1 ? page : "" }, { push: false });
      refresh();
      return;
    }
    render(jobs);
    pager();
  }

  // -- rows ----------------------------------------------------------------------------
  function newRow(job) {
    const row = el("tr", { dataset: { jobId: job.id } });
    const short = RF.shortId(job.id);
    const link = el("a", { href: `/jobs/${job.id}`, className: "job-link", title: job.id, "aria-label": `Job ${short}` }, el("code", {}, short));
    row.append(
      el("td", { className: "id" }, link),
      el("td", { className: "submitted nowrap" }),
      el("td", { className: "owner" }),
      el("td", { className: "kind" }),
      el("td", { className: "model" }),
      el("td", { className: "size" }),
      el("td", { className: "class" }),
      el("td", { className: "status" },
        el("span", { className: "status-text" }),
        el("progress", { max: 1, value: 0, hidden: true, "aria-label": `progress of job ${short}` }),
        el("span", { className: "pct" }),
        el("small", { className: "waiting", hidden: true })),
      el("td", { className: "queue" }),
      el("td", { className: "attempts" }),
      el("td", { className: "prompt" }, el("span", { className: "prompt-text" }), el("small", { className: "error", hidden: true })),
      el("td", { className: "act" }),
    );
    return row;
  }

  function updateProgress(row, job) {
    const bar = row.querySelector("progress");
    const running = job.status === "running";
    if (bar.hidden === running) bar.hidden = !running;
    if (running && bar.value !== job.progress) bar.value = job.progress || 0;
    setText(row.querySelector(".pct"), running ? fmt.percent(job.progress) : "");
  }

  function updateNote(row, job) {
    const note = row.querySelector("td.status .waiting");
    setText(note, RF.statusNote(job));
    note.hidden = !note.textContent;
  }

  // What a screen reader hears of the queue: this account's own jobs starting and finishing
  // (not every job of the team, not each progress step), once per change of status.
  const SAID = { running: "started", succeeded: "succeeded", failed: "failed", canceled: "was canceled" };
  function announce(entry, job) {
    const before = entry.said;
    entry.said = job.status;
    if (!before || before === job.status || job.owner !== me.account || !SAID[job.status]) return;
    RF.announce(job, SAID[job.status]);
  }

  function updateRow(entry, job) {
    const { row } = entry;
    entry.job = job;
    RF.track(job);
    announce(entry, job);
    row.dataset.status = job.status;
    row.className = `job status-row-${job.status}${job.batch ? " in-batch" : ""}`;
    const cells = row.cells;
    updateTime(entry);
    const owner = job.submitted_by && job.submitted_by !== job.owner ? `${job.owner} (by ${job.submitted_by})` : job.owner;
    setText(cells[2], owner);
    setText(cells[3], spec.kind(job));
    setText(cells[4], spec.model(job));
    setText(cells[5], spec.size(job));
    setText(cells[6], job.worker ? `${job.spec.hardware} · ${job.worker}` : job.spec.hardware);
    const status = cells[7];
    status.className = `status status-${job.status}`;
    setText(status.querySelector(".status-text"), job.status);
    updateProgress(row, job);
    updateNote(row, job);
    let where = "";
    if (job.status === "queued") {
      const parts = [];
      if (job.queue_position !== undefined && job.queue_position !== null) parts.push(`#${job.queue_position}`);
      if (job.eta_s !== undefined) parts.push(fmt.eta(job.eta_s));
      where = parts.join(" · ");
    }
    setText(cells[8], where);
    setText(cells[9], job.attempts);
    setText(cells[10].querySelector(".prompt-text"), spec.prompt(job));
    cells[10].title = spec.prompt(job);
    const error = cells[10].querySelector("small");
    setText(error, job.error || "");
    error.hidden = !job.error;
    error.className = RF.messageClass(job.status);
    const key = `${job.status}/${job.priority}`;
    if (entry.key !== key) {
      entry.key = key;
      cells[11].replaceChildren(RF.actions(job, () => fetchOne(job.id)));
    }
  }

  // When it was submitted, relative ("3 min ago"), the exact times in its title; kept
  // current by a timer as well as by every update of the row.
  function updateTime({ row, job }) {
    const cell = row.cells[1];
    setText(cell, fmt.since(job.created_at));
    const title = `submitted ${fmt.time(job.created_at)}${job.finished_at ? `, finished ${fmt.time(job.finished_at)}` : ""}`;
    if (cell.title !== title) cell.title = title;
  }
  setInterval(() => { for (const entry of rows.values()) updateTime(entry); }, 10000);

  function batchRow(id) {
    let row = batchRows.get(id);
    if (!row) {
      row = el("tr", { className: "batch-row", dataset: { batch: id } },
        el("td", { colSpan: 12 },
          el("span", { className: "batch-title" }, "Batch ", el("code", { title: id }, RF.shortId(id))),
          el("progress", { max: 1, value: 0, "aria-label": `progress of batch ${RF.shortId(id)}` }),
          el("span", { className: "batch-summary muted" })));
      batchRows.set(id, row);
    }
    return row;
  }

  function updateBatch(id) {
    const row = batchRows.get(id);
    if (!row) return;
    const jobs = [...rows.values()].map((e) => e.job).filter((j) => j.batch === id);
    if (!jobs.length) return;
    const done = (j) => (j.status === "succeeded" ? 1 : j.status === "running" ? j.progress || 0 : 0);
    const progress = jobs.reduce((sum, j) => sum + done(j), 0) / jobs.length;
    const bar = row.querySelector("progress");
    if (bar.value !== progress) bar.value = progress;
    const counts = {};
    for (const j of jobs) counts[j.status] = (counts[j.status] || 0) + 1;
    const summary = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
    setText(row.querySelector(".batch-summary"), `${fmt.percent(progress)} · ${jobs.length} jobs here: ${summary}`);
  }

  // Put the rows in the order of `jobs` (a batch's jobs together under its header), creating,
  // updating and removing rows; rows that stay are the same elements (no flicker).
  function render(jobs) {
    const order = [];
    const ids = new Set();
    const batches = new Set();
    const byBatch = new Map();
    for (const job of jobs) if (job.batch) byBatch.set(job.batch, [...(byBatch.get(job.batch) || []), job]);
    for (const job of jobs) {
      if (ids.has(job.id)) continue;
      const group = job.batch && byBatch.get(job.batch).length > 1 ? byBatch.get(job.batch) : [job];
      if (group.length > 1) {
        batches.add(job.batch);
        order.push(batchRow(job.batch));
      }
      for (const member of group) {
        ids.add(member.id);
        let entry = rows.get(member.id);
        if (!entry) {
          entry = { row: newRow(member), job: member, key: "" };
          rows.set(member.id, entry);
        }
        updateRow(entry, member);
        order.push(entry.row);
      }
    }
    for (const [id, entry] of rows) if (!ids.has(id)) { entry.row.remove(); rows.delete(id); }
    for (const [id, row] of batchRows) if (!batches.has(id)) { row.remove(); batchRows.delete(id); }
    order.forEach((row, i) => { if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null); });
    for (const id of batches) updateBatch(id);
    document.getElementById("empty").hidden = jobs.length > 0;
  }

  function pager() {
    const pages = Math.max(1, Math.ceil(total / PER_PAGE));
    setText(document.getElementById("page-info"), `page ${page} of ${pages}`);
    const counted = `${total} job${total === 1 ? "" : "s"}`;
    setText(document.getElementById("counts"), searched === null ? counted
      : `${counted} in the newest ${searched} searched (narrow the other filters to search older ones)`);
    document.getElementById("pager").hidden = pages <= 1;
    document.getElementById("prev").disabled = page <= 1;
    document.getElementById("next").disabled = page >= pages;
  }

  async function fetchOne(id) {
    const { ok, body: job } = await api(`/jobs/${id}`);
    const entry = rows.get(id);
    if (!ok || !entry) return;
    if (!matches(job, filters())) { refresh(); return; } // e.g. it left the status filtered on
    updateRow(entry, job);
    if (job.batch) updateBatch(job.batch);
  }

  let pending = null;
  let typing = null;
  // At most one refresh per 300 ms however many events ask: at once if none ran in the last
  // 300 ms, else one when they have passed (a throttle, not a debounce: a steady stream of
  // events must not keep pushing the update back).
  const refreshSoon = () => {
    if (pending) return;
    const wait = lastRefresh + 300 - Date.now();
    if (wait <= 0) { refresh(); return; }
    pending = setTimeout(() => { pending = null; refresh(); }, wait);
  };

  const lastStatus = new Map(); // job id -> the status of its latest event (unfinished jobs)
  function onEvent(event) {
    const entry = rows.get(event.job);
    const before = lastStatus.has(event.job) ? lastStatus.get(event.job) : entry && entry.job.status;
    if (RF.FINAL.has(event.status)) lastStatus.delete(event.job);
    else lastStatus.set(event.job, event.status);
    if (event.status === "running" && before === "running") { // progress: moves no one's standing
      if (entry && event.progress !== undefined) {
        entry.job = { ...entry.job, progress: event.progress, note: event.note };
        updateProgress(entry.row, entry.job);
        updateNote(entry.row, entry.job);
        if (entry.job.batch) updateBatch(entry.job.batch);
      }
      return;
    }
    // Anything else (a start, a finish, a cancel, a retry, a priority change, a new job) may
    // move every waiting job's position, ETA and reason, and a new job's place is the
    // server's order: the page is read again.
    const waitingShown = [...rows.values()].some((e) => e.job.status === "queued");
    if (entry || waitingShown || page === 1) refreshSoon();
  }

  function changed() {
    page = 1;
    // One history entry per change; the keystrokes of one search share it.
    RF.setQuery({ ...filters(), page: "" }, { push: !typing });
    clearTimeout(typing);
    typing = setTimeout(() => { typing = null; refresh(); }, 250);
  }
  form.addEventListener("input", changed);
  form.addEventListener("reset", () => setTimeout(changed));
  form.addEventListener("submit", (e) => e.preventDefault());
  const go = (delta) => { page += delta; RF.setQuery({ ...filters(), page: page > 1 ? page : "" }); refresh(); };
  document.getElementById("prev").addEventListener("click", () => go(-1));
  document.getElementById("next").addEventListener("click", () => go(1));
  window.addEventListener("popstate", () => { fromAddress(); refresh(); }); // Back, Forward

  api("/models").then(({ body: answer }) => {
    const select = document.getElementById("filter-model");
    for (const m of answer.models || []) {
      if (m.family === "checkpoint" || m.family === "upscaler") select.add(new Option(m.name, m.name));
    }
    if (initial.model) select.value = initial.model;
  });

  RF.live({ onEvent, poll: refresh });
})();
