// The model store by family, with sizes, and which workers hold each model in cache.
"use strict";

(() => {
  const { api, el, setText, fmt } = RF;
  const FAMILIES = [["checkpoint", "Checkpoints"], ["vae", "VAEs"], ["controlnet", "ControlNets"], ["upscaler", "Upscalers"]];

  async function load() {
    const [{ body: store }, { body: fleet }] = await Promise.all([api("/models"), api("/workers")]);
    const models = store.models || [];
    const holders = new Map(); // family/name -> [worker (tier)]
    for (const w of fleet.workers || []) {
      for (const m of w.models || []) {
        const key = `${m.family}/${m.name}`;
        holders.set(key, [...(holders.get(key) || []), m.tier && m.tier !== "ram" ? `${w.name} (${m.tier})` : w.name]);
      }
    }
    const box = document.getElementById("families");
    box.replaceChildren(...FAMILIES.map(([family, title]) => {
      const list = models.filter((m) => m.family === family);
      const size = list.reduce((s, m) => s + m.size_bytes, 0);
      return el("section", { className: "card family", dataset: { family } },
        el("h2", {}, title, " ", el("span", { className: "muted" }, `${list.length} · ${fmt.bytes(size)}`)),
        list.length
          ? el("table", { className: "compact" },
            el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Kind"), el("th", { className: "num" }, "Size"), el("th", {}, "Held by"))),
            el("tbody", {}, ...list.map((m) => el("tr", { dataset: { model: m.name } },
              el("td", {}, m.name), el("td", {}, m.kind), el("td", { className: "num" }, fmt.bytes(m.size_bytes)),
              el("td", { className: "held" }, (holders.get(`${family}/${m.name}`) || []).join(", ") || el("span", { className: "muted" }, "no worker"))))))
          : el("p", { className: "muted" }, "none in the store"));
    }));
    document.getElementById("models-empty").hidden = models.length > 0;
    setText(document.getElementById("model-count"), `${models.length} models`);
  }

  load();
  setInterval(load, 5000);
})();
