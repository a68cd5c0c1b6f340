// One account's API tokens (templates/_tokens.html): the list, a new one with its secret
// shown once, revoke. The Admin page picks the account; the Account page is your own.
"use strict";

function tokenCard({ account = () => "", changed = () => {} } = {}) {
  const { api, el, fmt, flash } = RF;
  const secretBox = document.getElementById("new-token-secret");
  const whose = () => (account() ? `?account=${encodeURIComponent(account())}` : "");
  const refused = (r) => flash(RF.refusal(r), "error");

  async function revoke(id) {
    const r = await api(`/tokens/${encodeURIComponent(id)}${whose()}`, { method: "DELETE" });
    if (!r.ok) refused(r);
    load(); changed();
  }

  async function load() {
    const r = await api(`/tokens${whose()}`);
    if (!r.ok) return refused(r);
    const rows = (r.body.tokens || []).map((t) => el("tr", { dataset: { token: t.id } },
      el("td", {}, el("code", {}, t.id)), el("td", {}, t.label || "–"), el("td", {}, fmt.date(t.created_at)),
      el("td", {}, fmt.date(t.last_used)), el("td", {}, t.expires_at ? fmt.date(t.expires_at) : "never"),
      el("td", {}, el("button", { type: "button", className: "small revoke", textContent: "Revoke", "aria-label": `Revoke token ${t.id}`, on: { click: () => revoke(t.id) } }))));
    document.getElementById("token-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: 6, className: "muted" }, "no tokens"))]));
  }

  document.getElementById("new-token").addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = event.target.elements;
    const body = { label: f.label.value || undefined, expires_days: f.expires_days.value ? Number(f.expires_days.value) : undefined };
    const r = await api(`/tokens${whose()}`, { method: "POST", body });
    RF.tell(event.target, document.getElementById("token-message"), r);
    if (!r.ok) return;
    document.getElementById("token-secret").textContent = r.body.token;
    secretBox.hidden = false;
    event.target.reset();
    load(); changed();
  });

  return { load, hideSecret: () => { secretBox.hidden = true; } };
}
