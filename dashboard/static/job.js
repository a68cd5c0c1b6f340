// One job: its spec, seeds, images, PNG parameters, attempts and time per stage, live.
"use strict";

(() => {
  const { api, el, setText, fmt, spec } = RF;
  const root = document.getElementById("job");
  const id = root.dataset.jobId;
  let job = null;
  let shownImages = "";
  let actionsKey = "";
  let last = "";

  // SD-WebUI's `parameters` text, as the worker writes it into each PNG.
  function parameters(s, seed) {
    if (s.kind === "upscale") {
      const size = s.scale ? `scale ${s.scale}` : `${s.width}x${s.height}`;
      return `Upscale: ${s.upscaler}, ${size}, Tile: ${s.tile}`;
    }
    const lines = [s.prompt || ""];
    if (s.negative_prompt) lines.push(`Negative prompt: ${s.negative_prompt}`);
    const fields = [
      ["Steps", s.steps], ["Sampler", s.sampler], ["CFG scale", s.cfg_scale], ["Seed", seed],
      ["Size", `${s.width}x${s.height}`], ["Model", s.model],
    ];
    if (s.vae) fields.push(["VAE", s.vae]);
    if (s.kind === "img2img") fields.push(["Denoising strength", s.denoising_strength]);
    if (s.mask) fields.push(["Mask blur", s.mask_blur]);
    if (s.hires) {
      fields.push(["Hires upscale", s.hires.scale], ["Hires upscaler", s.hires.upscaler]);
      if (s.hires.steps) fields.push(["Hires steps", s.hires.steps]);
      fields.push(["Denoising strength", s.hires.denoising_strength]);
    }
    (s.controlnet || []).forEach((u, i) => fields.push([`ControlNet ${i}`, `Model: ${u.model}, Weight: ${u.conditioning_scale}, Guidance Start: ${u.guidance_start}, Guidance End: ${u.guidance_end}`]));
    lines.push(fields.map(([k, v]) => `${k}: ${v}`).join(", "));
    return lines.join("\n");
  }

  function facts() {
    const dl = document.getElementById("facts");
    const items = [
      ["Owner", job.submitted_by && job.submitted_by !== job.owner ? `${job.owner} (submitted by ${job.submitted_by})` : job.owner],
      ["Kind", spec.kind(job)],
      ["Model", spec.model(job)],
      ["Size", spec.size(job)],
      ["Class", job.spec.hardware],
      ["Priority", job.priority],
      ["Worker", job.worker || "–"],
      ["Attempts", job.attempts],
      ["Seeds", (job.seeds || []).join(", ") || "–"],
      ["Submitted", fmt.time(job.created_at)],
    ];
    if (job.status === "queued" && job.queue_position !== undefined && job.queue_position !== null) {
      items.push(["Queue position", `#${job.queue_position}`]);
    }
    if (job.status === "queued" && job.eta_s !== undefined) items.push(["ETA", fmt.eta(job.eta_s)]);
    if (job.batch) items.push(["Batch", el("code", { title: job.batch }, RF.shortId(job.batch))]);
    if (job.manifest) items.push(["Manifest", job.manifest_url ? el("a", { href: job.manifest_url }, "manifest.json") : job.manifest]);
    dl.replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function stages() {
    const st = job.stages || {
      queued_s: job.dispatched_at ? job.dispatched_at - job.created_at : null,
      dispatched_s: job.started_at && job.dispatched_at ? job.started_at - job.dispatched_at : null,
      running_s: job.finished_at && job.started_at ? job.finished_at - job.started_at : null,
      total_s: job.finished_at ? job.finished_at - job.created_at : null,
    };
    const rows = [["Queued", st.queued_s], ["Dispatched", st.dispatched_s], ["Running", st.running_s], ["Total", st.total_s]];
    document.querySelector("#stages tbody").replaceChildren(
      ...rows.map(([name, s]) => el("tr", {}, el("th", { scope: "row" }, name), el("td", {}, s === null || s === undefined ? "–" : fmt.duration(s)))));
  }

  function attempts() {
    const tbody = document.querySelector("#attempts tbody");
    const history = job.attempts_history;
    if (!history) {
      tbody.replaceChildren(el("tr", {}, el("td", { colSpan: 5, className: "muted" },
        job.attempts ? `${job.attempts} attempt(s); latest on ${job.worker || "–"}` : "not started yet")));
      return;
    }
    if (!history.length) { tbody.replaceChildren(el("tr", {}, el("td", { colSpan: 5, className: "muted" }, "not started yet"))); return; }
    tbody.replaceChildren(...history.map((a) => el("tr", { className: `outcome-${a.outcome}` },
      el("td", {}, a.attempt), el("td", {}, a.worker || "–"), el("td", {}, fmt.time(a.started_at)),
      el("td", {}, fmt.time(a.finished_at)),
      el("td", {}, a.outcome || "running", a.error ? el("small", { className: RF.messageClass(a.outcome) }, a.error) : null))));
  }

  function specTable() {
    const rows = [];
    const add = (key, value) => {
      if (value === null || value === undefined || value === "") return;
      if (Array.isArray(value)) value.forEach((v, i) => add(`${key}.${i}`, v));
      else if (typeof value === "object") for (const [k, v] of Object.entries(value)) add(`${key}.${k}`, v);
      else rows.push(el("tr", {}, el("th", { scope: "row" }, key), el("td", {}, String(value))));
    };
    for (const [k, v] of Object.entries(job.spec)) add(k, v);
    document.querySelector("#spec tbody").replaceChildren(...rows);
  }

  // An output image's text alternative: what was asked for, and which image it is.
  const described = (index) => `${spec.prompt(job) || `${spec.kind(job)} output`} (image ${index + 1} of ${job.outputs.length})`;

  function images() {
    const key = JSON.stringify(job.outputs);
    if (key === shownImages) return;
    shownImages = key;
    const box = document.getElementById("images");
    if (!job.outputs.length) { box.replaceChildren(el("p", { className: "muted" }, "No images yet.")); return; }
    box.replaceChildren(...job.outputs.map((out) => el("figure", {},
      el("a", { href: out.url }, el("img", { src: out.url, alt: described(out.index), className: "full" })),
      el("figcaption", {}, `image ${out.index} · seed ${(job.seeds || [])[out.index] ?? "–"} · `,
        el("a", { href: out.url, download: `${job.id}-${out.index}.png`, className: "download" }, "download")))));
  }

  // The images it was given, shown once (they never change): init image, mask, ControlNet.
  function inputs() {
    const box = document.getElementById("inputs-box");
    if (!box.hidden || !(job.inputs || []).length) return;
    document.getElementById("inputs").replaceChildren(...job.inputs.map((input) => el("figure", {},
      el("a", { href: input.url }, el("img", { src: input.url, alt: RF.inputName(input.field), className: "input" })),
      el("figcaption", {}, RF.inputName(input.field)))));
    box.hidden = false;
  }

  function progress() {
    const bar = document.getElementById("job-progress");
    const running = job.status === "running";
    bar.hidden = !running;
    if (running && bar.value !== job.progress) bar.value = job.progress || 0;
    setText(document.getElementById("job-progress-text"), running ? fmt.percent(job.progress) : "");
  }

  function note() {
    const line = document.getElementById("job-waiting");
    setText(line, RF.statusNote(job));
    line.hidden = !line.textContent;
  }

  // Said to a screen reader when the status changes while the page is open (not when it
  // loads: the page itself says it), with a failure's reason; the progress steps are not.
  let said = null;
  function announce() {
    const before = said;
    said = job.status;
    if (before === null || before === job.status) return;
    RF.announce(job, job.status);
  }

  function show() {
    RF.track(job);
    announce();
    const status = document.getElementById("job-status");
    status.className = `status status-${job.status}`;
    setText(status, job.status);
    setText(document.getElementById("job-kind"), spec.kind(job));
    progress();
    note();
    const error = document.getElementById("job-error");
    setText(error, job.error || "");
    error.hidden = !job.error;
    error.className = RF.messageClass(job.status);
    const key = `${job.status}/${job.priority}`;
    if (key !== actionsKey) {
      actionsKey = key;
      document.getElementById("job-actions").replaceChildren(RF.actions(job, load), RF.deleteButton(job) || "");
    }
    setText(document.getElementById("parameters"), parameters(job.spec, (job.seeds || [job.spec.seed])[0]));
    facts();
    stages();
    attempts();
    specTable();
    images();
    inputs();
  }

  async function load() {
    const { ok, status, body } = await api(`/jobs/${id}`);
    // The page was served with the job: a 404 now, even on the first read, is its deletion.
    if (status === 404) { gone(); return; }
    if (!ok) return;
    const text = JSON.stringify(body);
    if (text === last) return; // nothing changed
    last = text;
    job = body;
    show();
  }

  // Deleted while this page is open (by its owner elsewhere, an operator, or retention): its
  // images went with it, so no links to them (each would be a 404) and no actions are left.
  function gone() {
    const status = document.getElementById("job-status");
    status.className = "status status-deleted";
    if (status.textContent !== "deleted") RF.announce({ id }, "was deleted");
    setText(status, "deleted");
    document.getElementById("job-progress").hidden = true;
    setText(document.getElementById("job-progress-text"), "");
    document.getElementById("images").replaceChildren(el("p", { className: "muted" }, "Its images were deleted with it."));
    document.getElementById("inputs-box").hidden = true;
    const error = document.getElementById("job-error");
    setText(error, "This job was deleted.");
    error.className = "error";
    error.hidden = false;
    document.getElementById("job-actions").replaceChildren();
    document.getElementById("reuse")?.remove();
  }

  RF.live({
    poll: load,
    onEvent(event) {
      if (event.job !== id || !job) return;
      if (event.deleted) { gone(); return; }
      if (event.status !== job.status) { load(); return; }
      job = { ...job, progress: event.progress, note: event.note };
      progress();
      note();
    },
  });
})();
