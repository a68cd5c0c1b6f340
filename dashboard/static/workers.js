// The live fleet from the workers' heartbeats; drain / undrain for operators.
"use strict";

(() => {
  const { api, el, setText, fmt, me } = RF;
  const body = document.getElementById("worker-rows");
  const rows = new Map();
  const jobs = new Map(); // current job id -> job (for its progress)

  function cacheCell(w) {
    const names = (w.models || []).map((m) => `${m.name} (${fmt.bytes(m.size_bytes)})`);
    const budget = w.cache_budget ? `${fmt.bytes(w.cache_bytes)} of ${fmt.bytes(w.cache_budget)}` : fmt.bytes(w.cache_bytes);
    return [el("div", {}, budget), el("small", { className: "muted" }, names.join(", ") || "empty")];
  }

  function nowCell(w) {
    if (!w.current_job) return ["idle"];
    const job = jobs.get(w.current_job);
    const short = RF.shortId(w.current_job);
    const link = el("a", { href: `/jobs/${w.current_job}`, title: w.current_job, "aria-label": `Job ${short}` }, el("code", {}, short));
    if (!job) return [link];
    return [link, " ", el("progress", { max: 1, value: job.progress || 0, "aria-label": `progress of job ${short}` }), ` ${fmt.percent(job.progress)}`,
      el("small", { className: "muted block" }, RF.spec.prompt(job))];
  }

  function state(w) {
    if (w.stalled_job) return ["stalled", "failed"];
    if (w.draining) return ["draining", "canceled"];
    return [w.current_job ? "busy" : "idle", w.current_job ? "running" : "succeeded"];
  }

  function actions(w) {
    if (me.steersAny !== "yes") return [];
    const draining = Boolean(w.draining);
    return [el("button", {
      type: "button", className: `small action ${draining ? "undrain" : "drain"}`, textContent: draining ? "Undrain" : "Drain",
      "aria-label": `${draining ? "Undrain" : "Drain"} ${w.name}`,
      on: { click: async () => {
        const r = await api(`/workers/${encodeURIComponent(w.name)}/drain`, { method: "POST", body: { drain: !draining } });
        if (!r.ok) RF.flash(r.body.error || `refused (${r.status})`, "error");
        else RF.flash(`${w.name} ${draining ? "takes jobs again" : "is draining: it finishes its job and takes no new ones"}`);
        refresh();
      } },
    })];
  }

  function update(row, w) {
    const c = row.cells;
    setText(c[0], w.name);
    setText(c[1], w.hardware);
    c[2].replaceChildren(el("div", {}, w.device_name || "–"), el("small", { className: "muted" }, [w.device, w.precision].filter(Boolean).join(" · ")));
    c[3].replaceChildren(el("div", {}, `${fmt.bytes(w.memory_used)} of ${fmt.bytes(w.memory_total)}`),
      el("small", { className: "muted" }, `process ${fmt.bytes(w.process_rss)}`));
    c[4].replaceChildren(...cacheCell(w));
    c[5].replaceChildren(...nowCell(w));
    setText(c[6], `${w.jobs_done ?? 0} / ${w.jobs_failed ?? 0}`);
    setText(c[7], fmt.ago(w.seen_at));
    const [label, tone] = state(w);
    c[8].className = `state status-${tone}`;
    setText(c[8], label);
    const key = String(Boolean(w.draining));
    if (row.dataset.key !== key) { row.dataset.key = key; c[9].replaceChildren(...actions(w)); }
    row.dataset.draining = w.draining ? "yes" : "";
  }

  async function refresh() {
    const { ok, body: answer } = await api("/workers");
    if (!ok) return;
    const workers = answer.workers || [];
    await Promise.all(workers.filter((w) => w.current_job).map(async (w) => {
      const r = await api(`/jobs/${w.current_job}`);
      if (r.ok) jobs.set(w.current_job, r.body);
    }));
    const names = new Set(workers.map((w) => w.name));
    for (const [name, row] of rows) if (!names.has(name)) { row.remove(); rows.delete(name); }
    for (const w of workers) {
      let row = rows.get(w.name);
      if (!row) {
        row = el("tr", { dataset: { worker: w.name } }, ...Array.from({ length: 10 }, () => el("td")));
        rows.set(w.name, row);
        body.append(row);
      }
      update(row, w);
    }
    document.getElementById("workers-empty").hidden = workers.length > 0;
    setText(document.getElementById("worker-count"), `${workers.length} live`);
  }

  refresh();
  setInterval(refresh, 2000);
})();
