// The submit form: every job kind, images as data URLs, a brush for inpainting masks, the
// API's field errors beside their fields; nothing typed is lost when a submission is refused.
"use strict";

(() => {
  const { api, el } = RF;
  const form = document.getElementById("job-form");
  const f = form.elements;
  const images = {}; // field -> data URL, or the inputs/<sha256>.png key of a reused job
  const units = document.getElementById("cn-units");
  const MAX_UNITS = 4;
  let models = [];

  // -- kinds -------------------------------------------------------------------------------
  const kind = () => form.querySelector("input[name=kind]:checked").value;
  function showKind() {
    const k = kind();
    form.dataset.kind = k;
    const diffusion = k !== "upscale";
    for (const node of form.querySelectorAll("[class*='for-']")) {
      const wanted = [...node.classList].some((c) => c === `for-${k}` || (diffusion && c === "for-diffusion"));
      node.hidden = !wanted;
    }
    if (k === "inpaint") sizeCanvas();
  }
  for (const radio of form.querySelectorAll("input[name=kind]")) radio.addEventListener("change", showKind);

  // -- models ------------------------------------------------------------------------------
  const ofFamily = (family) => models.filter((m) => m.family === family).map((m) => m.name);
  function fillSelect(select, names, keep = []) {
    const current = select.value || select.dataset.wanted;
    select.replaceChildren(...keep.map((n) => new Option(n, n === "automatic" ? "" : n)), ...names.map((n) => new Option(n, n)));
    if (current === undefined) return;
    // A reused job's model that left the store: named as it is, so the farm refuses it beside
    // its field, rather than the first model in the list rendering the job unnoticed.
    const missing = ![...select.options].some((o) => o.value === current);
    if (missing && current && current === select.dataset.wanted) select.add(new Option(`${current} (not in the store)`, current));
    if (!missing || current === select.dataset.wanted) select.value = current;
  }
  async function loadModels() {
    const { body } = await api("/models");
    models = body.models || [];
    fillModels();
  }
  function fillModels() {
    fillSelect(f.model, ofFamily("checkpoint"));
    fillSelect(f.vae, ofFamily("vae"), ["automatic"]);
    for (const select of form.querySelectorAll(".upscaler-select")) {
      fillSelect(select, ofFamily("upscaler"), select.classList.contains("with-latent") ? ["latent"] : []);
    }
    for (const select of units.querySelectorAll(".cn-model")) fillSelect(select, ofFamily("controlnet"));
  }

  // -- images ------------------------------------------------------------------------------
  const readFile = (file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  // What a reused job's image field holds: its key, and the image itself (`src`).
  function reusedNote(field, text, src) {
    const note = form.querySelector(`.reused-image[data-for="${field}"]`);
    if (note) showReused(note, text, src);
  }
  function showReused(note, text, src) {
    note.replaceChildren(text || "");
    if (text && src) note.append(el("img", { src, alt: text, className: "reused-preview" }));
    note.hidden = !text;
  }
  for (const field of ["init_image", "mask", "image"]) {
    f[field].addEventListener("change", async () => {
      const file = f[field].files[0];
      if (!file) { delete images[field]; return; }
      images[field] = await readFile(file);
      reusedNote(field, "");
      if (field === "init_image") {
        showInit(images[field]);
        // A reused job's mask was drawn for that job's image, not this one.
        if (String(images.mask || "").startsWith("inputs/")) dropMask();
      }
      if (field === "mask") { painted = false; clearCanvas(); }
    });
  }

  // -- the mask brush: white strokes on a canvas over the init image -------------------------
  const paint = document.getElementById("paint");
  const preview = document.getElementById("init-preview");
  const canvas = document.getElementById("mask-canvas");
  const ctx = canvas.getContext("2d");
  let painted = false;
  let drawing = false;

  function showInit(src) {
    preview.onload = () => { paint.hidden = false; sizeCanvas(); };
    preview.src = src;
  }
  function sizeCanvas() {
    if (paint.hidden || !preview.naturalWidth) return;
    const w = preview.clientWidth;
    const h = preview.clientHeight;
    if (!w || !h || (canvas.width === w && canvas.height === h)) return;
    const old = painted ? canvas.toDataURL() : null;
    canvas.width = w; canvas.height = h;
    if (old) { const img = new Image(); img.onload = () => ctx.drawImage(img, 0, 0, w, h); img.src = old; }
  }
  function clearCanvas() { ctx.clearRect(0, 0, canvas.width, canvas.height); }
  const point = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  function stroke(e) {
    const [x, y] = point(e);
    ctx.lineWidth = Number(document.getElementById("brush-size").value);
    ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#fff";
    ctx.lineTo(x, y); ctx.stroke(); ctx.beginPath(); ctx.moveTo(x, y);
  }
  // A painted mask replaces an uploaded or reused one; Clear mask drops them all.
  function dropMask() { delete images.mask; f.mask.value = ""; reusedNote("mask", ""); }
  canvas.addEventListener("pointerdown", (e) => {
    drawing = true; painted = true; canvas.setPointerCapture(e.pointerId);
    dropMask();
    const [x, y] = point(e); ctx.beginPath(); ctx.moveTo(x, y); stroke(e);
  });
  canvas.addEventListener("pointermove", (e) => { if (drawing) stroke(e); });
  for (const ev of ["pointerup", "pointercancel"]) canvas.addEventListener(ev, () => { drawing = false; ctx.beginPath(); });
  document.getElementById("mask-clear").addEventListener("click", () => { clearCanvas(); painted = false; dropMask(); });
  window.addEventListener("resize", sizeCanvas);

  // The painted mask at the init image's own size: black = keep, white = repaint.
  function maskDataURL() {
    const out = document.createElement("canvas");
    out.width = preview.naturalWidth; out.height = preview.naturalHeight;
    const c = out.getContext("2d");
    c.fillStyle = "#000"; c.fillRect(0, 0, out.width, out.height);
    c.drawImage(canvas, 0, 0, out.width, out.height);
    return out.toDataURL("image/png");
  }

  // -- ControlNet units ----------------------------------------------------------------------
  function renumber() {
    [...units.children].forEach((unit, i) => {
      unit.dataset.index = i;
      unit.querySelector(".cn-n").textContent = i + 1;
      unit.querySelector(".cn-remove").setAttribute("aria-label", `remove ControlNet unit ${i + 1}`);
    });
    document.getElementById("cn-add").disabled = units.children.length >= MAX_UNITS;
  }
  function addUnit(values = {}) {
    if (units.children.length >= MAX_UNITS) return null;
    const unit = document.getElementById("cn-unit").content.firstElementChild.cloneNode(true);
    const select = unit.querySelector(".cn-model");
    fillSelect(select, ofFamily("controlnet"));
    if (values.model) { select.dataset.wanted = values.model; select.value = values.model; }
    for (const key of ["conditioning_scale", "guidance_start", "guidance_end"]) {
      if (values[key] !== undefined) unit.querySelector(`[data-key=${key}]`).value = values[key];
    }
    if (values.image) {
      unit.image = values.image;
      showReused(unit.querySelector(".reused-image"), `using ${values.image}`, values.preview);
    }
    unit.querySelector(".cn-image").addEventListener("change", async (e) => {
      const file = e.target.files[0];
      unit.image = file ? await readFile(file) : undefined;
      unit.querySelector(".reused-image").hidden = true;
    });
    unit.querySelector(".cn-remove").addEventListener("click", () => { unit.remove(); renumber(); });
    units.append(unit);
    renumber();
    return unit;
  }
  document.getElementById("cn-add").addEventListener("click", () => addUnit());

  // -- the spec ----------------------------------------------------------------------------
  const num = (input) => (input.value === "" ? undefined : Number(input.value));
  const text = (input) => (input.value === "" ? undefined : input.value);
  function buildSpec() {
    const k = kind();
    if (k === "upscale") {
      const spec = { kind: "upscale", image: images.image, upscaler: text(f.upscaler), tile: num(f.tile), hardware: f.hardware.value };
      if (form.querySelector("input[name=upscale_by]:checked").value === "scale") spec.scale = num(f.scale);
      else { spec.width = num(f.up_width); spec.height = num(f.up_height); }
      return spec;
    }
    const spec = {
      kind: k === "txt2img" ? "txt2img" : "img2img",
      model: text(f.model), prompt: f.prompt.value, negative_prompt: f.negative_prompt.value,
      sampler: f.sampler.value, steps: num(f.steps), cfg_scale: num(f.cfg_scale),
      width: num(f.width), height: num(f.height), seed: num(f.seed),
      batch_size: num(f.batch_size), batch_count: num(f.batch_count),
      vae: text(f.vae), hardware: f.hardware.value,
    };
    if (k === "txt2img" && f.hires_on.checked) {
      spec.hires = {
        scale: num(f.hires_scale), upscaler: f.hires_upscaler.value,
        steps: num(f.hires_steps), denoising_strength: num(f.hires_denoising),
      };
    }
    if (k !== "txt2img") {
      Object.assign(spec, { init_image: images.init_image, denoising_strength: num(f.denoising_strength), resize_mode: f.resize_mode.value });
    }
    if (k === "inpaint") {
      spec.mask = images.mask || (painted ? maskDataURL() : undefined);
      spec.mask_blur = num(f.mask_blur);
    }
    const cn = [...units.children].map((unit) => ({
      model: unit.querySelector(".cn-model").value || undefined,
      image: unit.image,
      conditioning_scale: num(unit.querySelector(".cn-scale")),
      guidance_start: num(unit.querySelector(".cn-start")),
      guidance_end: num(unit.querySelector(".cn-end")),
    }));
    if (cn.length) spec.controlnet = cn;
    return spec;
  }

  // -- errors beside their fields --------------------------------------------------------------
  function clearErrors() {
    for (const node of form.querySelectorAll(".field-error")) node.remove();
    for (const node of form.querySelectorAll(".invalid")) {
      node.classList.remove("invalid");
      node.removeAttribute("aria-invalid");
      node.removeAttribute("aria-describedby");
    }
    document.getElementById("form-errors").replaceChildren();
  }
  const visible = (node) => node.offsetParent !== null || node.type === "file";
  function inputFor(field) {
    const parts = field.split(".");
    if (parts[0] === "controlnet" && parts.length >= 2) {
      const unit = units.children[Number(parts[1])];
      if (!unit) return document.getElementById("cn-add");
      return (parts[2] && unit.querySelector(`[data-key="${parts[2]}"]`)) || unit.querySelector("legend");
    }
    for (let n = parts.length; n > 0; n -= 1) {
      const name = parts.slice(0, n).join(".");
      const found = [...form.querySelectorAll(`[data-field="${name}"]`)].filter((node) => !node.closest("[hidden]") && visible(node));
      if (found.length) return found[0];
    }
    return null;
  }
  let errorIds = 0;
  function showErrors(errors, fallback) {
    // A refused submission must not look accepted: the notes of earlier ones go.
    document.getElementById("submitted").replaceChildren();
    const general = document.getElementById("form-errors");
    for (const error of errors) {
      const field = String(error.field || "").replace(/^spec\./, "");
      const input = field ? inputFor(field) : null;
      if (!input) {
        general.append(el("li", {}, field && field !== "body" ? `${field}: ${error.reason}` : error.reason));
        continue;
      }
      input.classList.add("invalid");
      input.setAttribute("aria-invalid", "true");
      // The message is read with the field, as its description (a second error on one field adds
      // to the first); hidden from the label it sits in, or it would be the field's name too.
      const message = el("span", {
        className: "field-error", id: `field-error-${(errorIds += 1)}`, "aria-hidden": "true", dataset: { for: field },
      }, error.reason);
      const described = input.getAttribute("aria-describedby");
      input.setAttribute("aria-describedby", described ? `${described} ${message.id}` : message.id);
      input.after(message);
    }
    if (!errors.length) general.append(el("li", {}, fallback));
    // Focus on the first refused field (a screen reader reads it, its message and "invalid");
    // else on the list of what went wrong.
    const first = [...form.querySelectorAll(".invalid")].find((node) => node.tabIndex >= 0);
    const target = first || (general.children.length ? general : form.querySelector(".invalid"));
    if (target) {
      target.focus({ preventScroll: true });
      target.scrollIntoView({ block: "center", behavior: "instant" });
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const spec = buildSpec();
    const extra = { priority: f.priority.value };
    if (f.owner && f.owner.value.trim()) extra.owner = f.owner.value.trim();
    if (kind() === "inpaint" && !spec.mask) {
      showErrors([{ field: "mask", reason: "paint the area to repaint, or upload a mask" }]);
      return;
    }
    const asBatch = spec.kind !== "upscale" && (spec.batch_count || 1) > 1;
    const button = document.getElementById("render");
    button.disabled = true;
    let answer;
    try {
      answer = asBatch
        ? await api("/batches", { method: "POST", body: { spec, ...extra } })
        : await api("/jobs", { method: "POST", body: { ...spec, ...extra } });
    } catch (err) {
      showErrors([], `could not reach the farm: ${err}`);
      return;
    } finally {
      button.disabled = false;
    }
    const { ok, status, body } = answer;
    if (!ok) {
      showErrors(body.errors || [], body.error || `refused (${status})`);
      return;
    }
    const jobs = asBatch ? body.jobs : [body];
    const note = el("p", { className: "ok" }, asBatch ? `Batch of ${jobs.length} jobs submitted: ` : "Submitted ",
      ...jobs.flatMap((job, i) => [i ? ", " : "", el("a", { href: `/jobs/${job.id}`, className: "job-link", title: job.id, dataset: { jobId: job.id } }, RF.shortId(job.id))]),
      " · ", el("a", { href: "/?scope=me" }, "my queue"));
    const box = document.getElementById("submitted");
    box.prepend(note);
    while (box.children.length > 5) box.lastElementChild.remove();
  });

  // -- reuse settings: /submit?from=<job id> ---------------------------------------------------
  async function reuse(id) {
    const { ok, body: job } = await api(`/jobs/${id}`);
    if (!ok) { RF.flash(`no job ${id} to reuse`, "error"); return; }
    const s = job.spec;
    const stored = (field) => (job.inputs || []).find((input) => input.field === field)?.url;
    const k = s.kind === "img2img" ? (s.mask ? "inpaint" : "img2img") : s.kind || "txt2img";
    form.querySelector(`input[name=kind][value="${k}"]`).checked = true;
    const set = (input, value) => {
      if (value === undefined || value === null) return;
      input.value = value;
      if (input.tagName === "SELECT") input.dataset.wanted = value;
    };
    if (k === "upscale") {
      set(f.upscaler, s.upscaler); set(f.tile, s.tile);
      if (s.scale) { set(f.scale, s.scale); form.querySelector("input[name=upscale_by][value=scale]").checked = true; } else {
        set(f.up_width, s.width); set(f.up_height, s.height);
        form.querySelector("input[name=upscale_by][value=size]").checked = true;
      }
      images.image = s.image;
      reusedNote("image", `using the image of job ${RF.shortId(id)} (${s.image})`, stored("image"));
    } else {
      for (const key of ["prompt", "negative_prompt", "model", "sampler", "steps", "cfg_scale", "width", "height", "seed", "batch_size", "batch_count"]) set(f[key], s[key]);
      set(f.vae, s.vae || "");
      if (s.hires) {
        f.hires_on.checked = true;
        set(f.hires_scale, s.hires.scale); set(f.hires_upscaler, s.hires.upscaler);
        set(f.hires_steps, s.hires.steps); set(f.hires_denoising, s.hires.denoising_strength);
      }
      if (s.init_image) {
        images.init_image = s.init_image;
        set(f.denoising_strength, s.denoising_strength); set(f.resize_mode, s.resize_mode);
        reusedNote("init_image", `using the init image of job ${RF.shortId(id)} (${s.init_image})`);
        if (stored("init_image")) showInit(stored("init_image")); // a new mask can be painted on it
      }
      if (s.mask) {
        images.mask = s.mask; set(f.mask_blur, s.mask_blur);
        reusedNote("mask", `using the mask of job ${RF.shortId(id)} (${s.mask})`, stored("mask"));
      }
      (s.controlnet || []).forEach((unit, i) => addUnit({ ...unit, preview: stored(`controlnet.${i}.image`) }));
    }
    set(f.hardware, s.hardware);
    if (job.priority) set(f.priority, job.priority);
    fillModels(); // a model that left the store is shown as such at once, not after a reload
    const note = document.getElementById("reused");
    note.replaceChildren("Settings of job ", el("a", { href: `/jobs/${id}`, title: id }, RF.shortId(id)));
    note.hidden = false;
    showKind();
  }

  showKind();
  const from = RF.query().from;
  loadModels().then(() => (from ? reuse(from) : null)).then(loadModels);
})();
