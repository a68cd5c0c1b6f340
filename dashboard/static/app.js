// Shared by every page. The dashboard talks to the same REST API as every other client,
// signed in by its session cookie; state-changing calls carry the page's CSRF token. The
// server decides what is allowed: the page only leaves out what this account may not do.
"use strict";

const RF = (() => {
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  const me = document.body.dataset; // account, role, maySubmit, steersAny
  const FINAL = new Set(["succeeded", "failed", "canceled"]);

  // A job id as people read it. Ids start with the nanosecond clock, so jobs submitted a
  // few seconds apart share their first digits; the random tail tells them apart. Links
  // and title attributes keep the full id. (templates/job.html uses the same rule.)
  const shortId = (id) => String(id).slice(-8);

  // An input image's field as people read it: "init image", "mask", "ControlNet 2 image".
  function inputName(field) {
    const unit = /^controlnet\.(\d+)\.image$/.exec(field);
    if (unit) return `ControlNet ${Number(unit[1]) + 1} image`;
    return field === "image" ? "image to upscale" : field.replace("_", " ");
  }

  async function api(path, { method = "GET", body, signal } = {}) {
    const headers = {};
    if (method !== "GET") headers["X-CSRFToken"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(`/api/v1${path}`, {
      method, headers, signal, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    }
    let data = {};
    try { data = await response.json(); } catch { /* not JSON (or empty) */ }
    return { status: response.status, ok: response.ok, body: data };
  }

  // el("td", {className: "x", dataset: {id: 1}}, "text", child, ...)
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // Only touch the DOM when the text changes: rows updated in place do not flicker.
  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  const fmt = {
    bytes(n) {
      if (n === undefined || n === null) return "–";
      const units = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
      return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
    },
    duration(s) {
      if (s === undefined || s === null || Number.isNaN(s)) return "–";
      if (s < 1) return `${Math.round(s * 1000)} ms`;
      if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
      if (s < 5400) return `${Math.round(s / 60)} min`;
      return `${(s / 3600).toFixed(1)} h`;
    },
    eta(s) {
      if (s === undefined) return "";
      if (s === null) return "unknown";
      if (s < 60) return `~${Math.max(1, Math.round(s))} s`;
      if (s < 5400) return `~${Math.round(s / 60)} min`;
      return `~${(s / 3600).toFixed(1)} h`;
    },
    ago(t) {
      if (!t) return "–";
      return `${fmt.duration(Math.max(0, Date.now() / 1000 - t))} ago`;
    },
    // "just now", "40 s ago", "3 min ago", "5 h ago", "2 days ago": read at a glance (the
    // exact time belongs in a title attribute: fmt.time).
    since(t) {
      if (!t) return "–";
      const s = Math.max(0, Date.now() / 1000 - t);
      if (s < 10) return "just now";
      if (s < 60) return `${Math.floor(s)} s ago`;
      if (s < 5400) return `${Math.floor(s / 60)} min ago`;
      if (s < 172800) return `${Math.floor(s / 3600)} h ago`;
      return `${Math.floor(s / 86400)} days ago`;
    },
    time(t) {
      if (!t) return "–";
      const d = new Date(t * 1000);
      const today = new Date().toDateString() === d.toDateString();
      return today ? d.toLocaleTimeString() : d.toLocaleString();
    },
    date(t) { return t ? new Date(t * 1000).toLocaleDateString() : "–"; },
    percent(p) { return `${Math.round((p || 0) * 100)}%`; },
  };

  const spec = {
    kind(job) {
      const s = job.spec || {};
      if (s.kind === "img2img" && s.mask) return "inpaint";
      return s.kind || "txt2img";
    },
    model(job) {
      const s = job.spec || {};
      return s.kind === "upscale" ? s.upscaler : s.model;
    },
    size(job) {
      const s = job.spec || {};
      if (s.kind === "upscale") return s.scale ? `×${s.scale}` : `${s.width}×${s.height}`;
      let text = `${s.width}×${s.height}`;
      if (s.hires) text += ` → ×${s.hires.scale}`;
      return text;
    },
    prompt(job) {
      const s = job.spec || {};
      return s.kind === "upscale" ? `upscale with ${s.upscaler}` : s.prompt || "";
    },
  };

  // The line under a job's status: why a queued job waits, as the server says (it gives a
  // reason only for each owner's first jobs in line, README, Scheduling: the reasons on
  // waiting jobs; none yet for a job a pass has not looked at: those wait their turn), or what
  // a running job is doing besides its steps (its note: a model being fetched, outputs
  // waiting for storage to come back).
  function statusNote(job) {
    if (job.status === "running") return job.note || "";
    if (job.status !== "queued") return "";
    if (job.waiting) return job.waiting;
    return job.state === "dispatched" ? "sent to a worker, starting" : "waiting its turn";
  }

  // The class of a finished job's message (`error`): a failure's in the error colour, a
  // cancellation's neutral (someone chose it; nothing went wrong).
  const messageClass = (outcome) => (outcome === "canceled" ? "muted block" : "error");

  // What a refused answer says: its field errors ("field: reason; ..."), else its error.
  const refusal = (r) => (r.body.errors ? r.body.errors.map((e) => `${e.field}: ${e.reason}`).join("; ") : r.body.error || `refused (${r.status})`);

  // A small form's answer `r` told in `message` (a live region): accepted, `okText` (class ok
  // when there is one); refused, its refusal, and the fields it names are marked invalid,
  // described by the message, the first of them focused (the last refusal's marks go first).
  function tell(form, message, r, okText = "") {
    markRefused(form, message, r.ok ? undefined : r);
    message.className = `form-message ${r.ok ? (okText ? "ok" : "") : "error"}`;
    message.textContent = r.ok ? okText : refusal(r);
  }

  function markRefused(form, message, r) {
    for (const node of form.querySelectorAll("[aria-invalid]")) {
      node.removeAttribute("aria-invalid");
      node.removeAttribute("aria-describedby");
      node.classList.remove("invalid");
    }
    const named = ((r && r.body.errors) || [])
      .map((e) => form.querySelector(`[data-field="${String(e.field || "").replace(/^body\./, "")}"]`))
      .filter(Boolean);
    for (const input of named) {
      input.classList.add("invalid");
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", message.id);
    }
    if (named.length) named[0].focus();
  }

  const maySteer = (job) => me.steersAny === "yes" || (me.maySubmit === "yes" && job.owner === me.account);

  // The cancel / retry / priority controls this account may use on `job`.
  function actions(job, done) {
    const box = el("span", { className: "actions" });
    if (!maySteer(job)) return box;
    const post = async (path, body) => {
      const r = await api(`/jobs/${job.id}/${path}`, { method: "POST", body });
      if (!r.ok) flash(r.body.error || `refused (${r.status})`, "error");
      if (done) done(r);
    };
    // Each row has its own: the name says whose (a screen reader lists the buttons of a page).
    const of = ` job ${shortId(job.id)}`;
    if (job.status === "queued" || job.status === "running") {
      box.append(el("button", {
        type: "button", className: "small action cancel", textContent: "Cancel", "aria-label": `Cancel${of}`,
        on: { click: () => post("cancel") },
      }));
    }
    if (job.status === "failed" || job.status === "canceled") {
      box.append(el("button", {
        type: "button", className: "small action retry", textContent: "Retry", "aria-label": `Retry${of}`,
        on: { click: () => post("retry") },
      }));
    }
    if (job.status === "queued") {
      const select = el("select", { className: "priority", title: "priority", "aria-label": `Priority of${of}` },
        ...["high", "normal", "low"].map((p) => el("option", { value: p, textContent: p, selected: p === job.priority })));
      select.addEventListener("change", () => post("priority", { priority: select.value }));
      box.append(select);
    }
    return box;
  }

  // The queue or gallery this page was opened from, with its filters (a team clearing out its
  // failed jobs one by one keeps its place); else the queue.
  function backToList() {
    const from = document.referrer ? new URL(document.referrer) : null;
    const list = from && from.origin === location.origin && ["/", "/gallery"].includes(from.pathname);
    return list ? from.pathname + from.search : "/";
  }

  // Delete, for a finished job this account may steer (on its page, not on every queue row):
  // after a confirmation; then the queue (or gallery) it was opened from.
  function deleteButton(job) {
    if (!FINAL.has(job.status) || !maySteer(job)) return null;
    return el("button", {
      type: "button", className: "small action delete", textContent: "Delete",
      on: { click: async () => {
        const whose = job.owner === me.account ? "" : ` (${job.owner}'s)`; // an operator's deleting
        if (!window.confirm(`Delete job ${shortId(job.id)}${whose} and its images? This cannot be undone.`)) return;
        const r = await api(`/jobs/${job.id}`, { method: "DELETE" });
        if (!r.ok) { flash(refusal(r), "error"); return; }
        sessionStorage.setItem("rf-flash", `Job ${shortId(job.id)} deleted`); // said on the next page
        location.assign(backToList());
      } },
    });
  }

  // A short message at the top of the page, in one of the live regions of templates/base.html:
  // an error interrupts a screen reader (role=alert), anything else waits its turn (status).
  function flash(text, kind = "info") {
    document.getElementById("flash")?.remove();
    const box = el("div", { id: "flash", className: `flash ${kind}` }, text);
    document.getElementById(kind === "error" ? "alerts" : "messages").append(box);
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => box.remove(), 6000);
  }

  // Said to a screen reader, not shown: what happened to a job on a live page ("Job 1a2b3c4d
  // succeeded", a failure with its reason). Polite: it waits until the reader is done; one
  // sentence replaces the one before.
  function announce(job, what) {
    const error = job.status === "failed" && job.error ? `: ${job.error}` : "";
    const text = `Job ${shortId(job.id)} ${what}${error}`;
    const region = document.getElementById("announce");
    if (region && region.textContent !== text) region.textContent = text;
  }
  // A message the previous page left for this one (after a deletion, which leaves the page).
  const left = sessionStorage.getItem("rf-flash");
  if (left) { sessionStorage.removeItem("rf-flash"); flash(left); }

  // -- browser notifications when one of my jobs finishes ---------------------------------
  const seen = new Map(); // job id -> last status seen on this page
  const notifyButton = document.getElementById("notify");
  if ("Notification" in window && notifyButton && Notification.permission === "default") {
    notifyButton.hidden = false;
    notifyButton.addEventListener("click", async () => {
      await Notification.requestPermission();
      notifyButton.hidden = Notification.permission !== "default";
    });
  }
  function track(job) {
    // `job`: {id|job, status, owner, prompt?}
    const id = job.id || job.job;
    const before = seen.get(id);
    seen.set(id, job.status);
    if (before === undefined || before === job.status || job.owner !== me.account) return;
    if (job.status !== "succeeded" && job.status !== "failed") return;
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const note = new Notification(`Job ${shortId(id)} ${job.status}`, {
      body: job.spec ? spec.prompt(job) : "", tag: id,
    });
    note.onclick = () => { window.focus(); window.location.assign(`/jobs/${id}`); };
  }

  // -- live updates: Server-Sent Events, polling while the stream is down -----------------
  // onEvent(data) for each pushed change; poll() on start, every pollMs while there is no
  // stream, and every slowMs with one (queue positions and ETAs move without events).
  // A refused stream is asked for again after reopenMs.
  function live({ onEvent, poll, pollMs = 1500, slowMs = 10000, reopenMs = 10000 }) {
    const dot = document.getElementById("live");
    let timer = null;
    let streaming = false;
    const schedule = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        try { await poll(); } finally { schedule(); }
      }, streaming ? slowMs : pollMs);
    };
    const state = (on) => {
      streaming = on;
      if (dot) {
        dot.hidden = false;
        dot.classList.toggle("on", on);
        dot.title = on ? "live (events)" : "polling";
        dot.setAttribute("aria-label", on ? "live updates on" : "live updates: polling");
      }
      schedule();
    };
    if (window.EventSource) {
      let source = null;
      const open = () => {
        source = new EventSource("/api/v1/events");
        source.addEventListener("open", () => { state(true); poll(); });
        // A dropped stream reconnects itself (Last-Event-ID). One the server refused (429 or
        // 503: this account's or the server's open streams at their bound) never does, so
        // it is asked for again a little later; the page polls meanwhile.
        source.addEventListener("error", () => {
          state(false);
          if (source.readyState === EventSource.CLOSED) setTimeout(open, reopenMs);
        });
        source.addEventListener("message", (event) => {
          let data;
          try { data = JSON.parse(event.data); } catch { return; }
          if (!data || !data.job) return;
          track({ ...data, id: data.job });
          onEvent(data);
        });
      };
      open();
      window.addEventListener("beforeunload", () => source.close());
    }
    poll();
    state(false);
  }

  // The query string as an object, and back (bookmarkable filters). A user's step (a page,
  // a filter) is a new history entry, so Back undoes it (the page handles popstate);
  // `push: false` rewrites the current entry instead (the next keystrokes of one search).
  function query() { return Object.fromEntries(new URLSearchParams(location.search)); }
  function setQuery(values, { push = true } = {}) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(values)) if (v !== "" && v !== undefined && v !== null) params.set(k, v);
    const search = params.toString();
    const url = location.pathname + (search ? `?${search}` : "");
    if (url === location.pathname + location.search) return;
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }

  return { api, el, setText, fmt, spec, me, maySteer, actions, deleteButton, flash, announce, refusal, tell, track, live, query, setQuery, shortId, inputName, statusNote, messageClass, FINAL };
})();
