// The dashboard talks to the same REST API as every other client, signed in by its session
// cookie; state-changing calls carry the page's CSRF token. The server decides what is
// allowed: the page only leaves out what this account may not do.
const csrf = document.querySelector("meta[name=csrf-token]").content;
const me = document.body.dataset;
const api = (path, options = {}) => fetch(`/api/v1${path}`, {
  ...options, headers: { ...(options.headers || {}), "X-CSRFToken": csrf },
}).then(async (r) => {
  if (r.status === 401) window.location.assign("/login?next=/");
  return { status: r.status, body: await r.json() };
});
const maySteer = (job) => me.steersAny === "yes" || (job.owner === me.account && me.role !== "viewer");

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderJobs(jobs) {
  const body = document.getElementById("job-rows");
  body.replaceChildren();
  for (const job of jobs) {
    const row = body.insertRow();
    row.dataset.jobId = job.id;
    row.dataset.status = job.status;
    cell(row, job.id.slice(0, 8));
    cell(row, job.owner, "owner");
    cell(row, job.spec.prompt, "prompt");
    cell(row, job.spec.model);
    const status = cell(row, job.status, `status status-${job.status}`);
    if (job.status === "running") {
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = job.progress;
      status.append(" ", bar);
    }
    if (job.waiting) status.append(" ", Object.assign(document.createElement("small"),
      { className: "waiting", textContent: job.waiting }));
    if (job.error) status.title = job.error;
    const action = { queued: "cancel", running: "cancel", failed: "retry", canceled: "retry" }[job.status];
    if (action && maySteer(job)) {
      const button = Object.assign(document.createElement("button"), {
        className: `action ${action}`, textContent: action === "cancel" ? "Cancel" : "Retry",
      });
      button.addEventListener("click", async () => {
        await api(`/jobs/${job.id}/${action}`, { method: "POST" });
        refresh();
      });
      status.append(" ", button);
    }
    const images = row.insertCell();
    for (const out of job.outputs) {
      const link = document.createElement("a");
      link.href = out.url;
      const img = document.createElement("img");
      img.className = "thumb"; img.src = out.url; img.alt = `output ${out.index}`;
      link.append(img);
      images.append(link);
    }
    if (job.error) images.textContent = job.error;
  }
}

let shown = "";
async function refreshWorkers() {
  const { body } = await api("/workers");
  const list = document.getElementById("worker-rows");
  list.replaceChildren();
  for (const w of body.workers) {
    const row = list.insertRow();
    cell(row, w.name);
    cell(row, w.hardware);
    cell(row, w.device_name);
    cell(row, w.models.map((m) => m.name).join(", ") || "-");
    cell(row, w.draining ? "draining" : (w.current_job ? `job ${w.current_job.slice(0, 8)}` : "idle"));
    cell(row, String(w.jobs_done));
  }
}

async function refresh() {
  const { body } = await api("/jobs?limit=50");
  const snapshot = JSON.stringify(body.jobs);
  if (snapshot === shown) return; // nothing changed: keep the rows (and their images) as they are
  shown = snapshot;
  renderJobs(body.jobs);
}

async function loadModels() {
  const { body } = await api("/models");
  const select = document.getElementById("model-select");
  for (const m of body.models) select.add(new Option(m.name, m.name));
}

document.getElementById("job-form")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const spec = {};
  for (const [key, value] of form.entries()) {
    if (value === "") continue;
    const input = event.target.elements[key];
    spec[key] = input.type === "number" ? Number(value) : value;
  }
  const { status, body } = await api("/jobs", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(spec),
  });
  const errors = document.getElementById("form-errors");
  errors.replaceChildren();
  if (status !== 202) {
    const lines = (body.errors || []).map((e) => `${e.field}: ${e.reason}`);
    for (const text of lines.length ? lines : [body.error]) {
      errors.append(Object.assign(document.createElement("li"), { textContent: text }));
    }
    return;
  }
  refresh();
});

if (document.getElementById("model-select")) loadModels();
refresh();
refreshWorkers();
setInterval(refresh, 1000);
setInterval(refreshWorkers, 3000);
