// Accounts, roles, anyone's tokens (static/tokens.js) and the audit log, for admins.
"use strict";

(() => {
  const { api, el, fmt } = RF;
  const ROLES = ["viewer", "member", "operator", "admin"];
  const tokenAccount = document.getElementById("token-account");
  const tokens = tokenCard({ account: () => tokenAccount.value || RF.me.account, changed: () => loadAudit() });

  function fail(r) { RF.flash(RF.refusal(r), "error"); }

  async function change(name, body, done) {
    const r = await api(`/accounts/${encodeURIComponent(name)}`, { method: "POST", body });
    if (!r.ok) fail(r); else if (done) done();
    loadAccounts(); loadAudit();
  }

  function accountRow(a) {
    const role = el("select", { className: "role", title: "role", "aria-label": `Role of ${a.name}` }, ...ROLES.map((r) => el("option", { value: r, textContent: r, selected: r === a.role })));
    role.addEventListener("change", () => change(a.name, { role: role.value }, () => RF.flash(`${a.name} is now ${role.value}`)));
    const password = el("input", { type: "password", placeholder: "new password", autocomplete: "new-password", className: "password", "aria-label": `New password of ${a.name}` });
    const setPassword = el("button", { type: "button", className: "small", textContent: "Set", "aria-label": `Set password of ${a.name}`, on: { click: () => {
      if (!password.value) return;
      change(a.name, { password: password.value }, () => { password.value = ""; RF.flash(`password of ${a.name} changed`); });
    } } });
    const toggle = el("button", {
      type: "button", className: `small ${a.disabled ? "enable" : "disable"}`, textContent: a.disabled ? "Enable" : "Disable",
      "aria-label": `${a.disabled ? "Enable" : "Disable"} ${a.name}`,
      on: { click: () => {
        if (!a.disabled && !window.confirm(`Disable ${a.name}? Its sessions and tokens end and its unfinished jobs are canceled.`)) return;
        change(a.name, { disabled: !a.disabled });
      } },
    });
    const stateText = `${a.disabled ? "disabled" : "active"}${a.service ? " · service" : ""}`;
    return el("tr", { dataset: { account: a.name }, className: a.disabled ? "disabled" : "" },
      el("td", {}, a.name), el("td", {}, role), el("td", {}, stateText), el("td", {}, fmt.time(a.last_login)),
      el("td", { className: "nowrap" }, password, " ", setPassword), el("td", {}, toggle));
  }

  async function loadAccounts() {
    const r = await api("/accounts");
    if (!r.ok) return fail(r);
    const list = r.body.accounts || [];
    document.getElementById("account-rows").replaceChildren(...list.map(accountRow));
    const current = tokenAccount.value || RF.me.account;
    tokenAccount.replaceChildren(...list.map((a) => new Option(a.name, a.name)));
    tokenAccount.value = list.some((a) => a.name === current) ? current : RF.me.account;
  }

  async function loadAudit() {
    const r = await api("/audit?limit=100");
    if (!r.ok) return;
    document.getElementById("audit-rows").replaceChildren(...(r.body.entries || []).map((e) => el("tr", {},
      el("td", { className: "nowrap" }, fmt.time(e.time)), el("td", {}, e.actor), el("td", {}, el("code", {}, e.action)),
      el("td", {}, e.target), el("td", {}, e.detail), el("td", {}, e.source))));
  }

  document.getElementById("new-account").addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = event.target.elements;
    const body = { name: f.name.value.trim(), role: f.role.value };
    if (f.password.value) body.password = f.password.value;
    const r = await api("/accounts", { method: "POST", body });
    const message = document.getElementById("account-message");
    RF.tell(event.target, message, r, r.ok ? `created ${r.body.name} (${r.body.role})` : "");
    if (!r.ok) return;
    event.target.reset();
    await loadAccounts(); loadAudit();
  });

  tokenAccount.addEventListener("change", () => { tokens.hideSecret(); tokens.load(); });

  loadAccounts().then(tokens.load);
  loadAudit();
})();
