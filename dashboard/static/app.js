// The dashboard talks to the same REST API as every other client.
const api = (path, options) => fetch(`/api/v1${path}`, options).then(async (r) => ({
  status: r.status, body: await r.json(),
}));

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
    cell(row, job.spec.prompt, "prompt");
    cell(row, job.spec.model);
    const status = cell(row, job.status, `status status-${job.status}`);
    if (job.status === "running") {
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = job.progress;
      status.append(" ", bar);
    }
    if (job.error) status.title = job.error;
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

document.getElementById("job-form").addEventListener("submit", async (event) => {
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
    for (const e of body.errors || []) {
      const li = document.createElement("li");
      li.textContent = `${e.field}: ${e.reason}`;
      errors.append(li);
    }
    return;
  }
  refresh();
});

loadModels();
refresh();
setInterval(refresh, 1000);
