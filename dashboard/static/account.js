// Your own account: role and limits, your webhook and your API tokens (static/tokens.js).
"use strict";

(() => {
  const { api, fmt } = RF;
  const member = document.getElementById("new-token") !== null;
  const show = (id, text) => { document.getElementById(id).textContent = text; };

  async function loadMe() {
    const r = await api("/me");
    if (!r.ok) return;
    const { limits } = r.body;
    show("me-queued", `${limits.max_queued} jobs`);
    show("me-running", `${limits.max_running} jobs`);
    show("me-hardware", limits.hardware.length ? limits.hardware.join(", ") : "none");
    show("me-login", r.body.last_login ? fmt.time(r.body.last_login) : "never");
    const hook = document.querySelector("#webhook input[name=webhook_url]");
    if (hook) hook.value = r.body.webhook_url || "";
  }

  if (member) {
    tokenCard().load();
    document.getElementById("webhook").addEventListener("submit", async (event) => {
      event.preventDefault();
      const url = event.target.elements.webhook_url.value.trim();
      const r = await api("/me", { method: "POST", body: { webhook_url: url } });
      const message = document.getElementById("webhook-message");
      RF.tell(event.target, message, r, url ? "saved" : "cleared");
    });
  }
  loadMe();
})();
