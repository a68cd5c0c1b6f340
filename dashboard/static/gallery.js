// The team's recent outputs as thumbnails (made server-side: never the full PNG here).
"use strict";

(() => {
  const { api, el, setText } = RF;
  const form = document.getElementById("gallery-filters");
  const grid = document.getElementById("grid");
  const PER_PAGE = 48;
  let page = 1;
  let shown = "";
  function fromAddress() {
    const q = RF.query();
    page = Math.max(1, parseInt(q.page, 10) || 1);
    form.elements.scope.value = q.scope || "";
  }
  fromAddress();

  function tile(item) {
    const title = `${item.owner} · ${item.prompt || ""}`;
    const alt = item.prompt || `image ${item.index + 1} of job ${RF.shortId(item.job)}`;
    const img = item.thumbnail_url
      ? el("img", { src: item.thumbnail_url, alt, loading: "lazy" })
      : el("span", { className: "no-thumb" }, alt, el("small", { className: "block" }, "no thumbnail"));
    // The link reads "<prompt>, by <owner>"; the caption, its copy for the eye, is not read twice.
    return el("a", {
      className: "tile", href: `/jobs/${item.job}`, title, "aria-label": `${alt}, by ${item.owner}`,
      dataset: { job: item.job, index: item.index },
    }, img, el("span", { className: "caption", "aria-hidden": "true" }, el("strong", {}, item.owner), " ", item.prompt || ""));
  }

  async function load() {
    const owner = form.elements.scope.value === "me" ? "me" : "";
    const params = new URLSearchParams({ page, per_page: PER_PAGE });
    if (owner) params.set("owner", owner);
    const { ok, status, body } = await api(`/gallery?${params}`);
    const items = ok ? body.items || [] : [];
    const total = ok ? body.total ?? items.length : 0;
    const last = Math.max(1, Math.ceil(total / PER_PAGE));
    if (ok && page > last) { // past the end (its images deleted, say): the last page there is now
      page = last;
      RF.setQuery({ scope: form.elements.scope.value, page: page > 1 ? page : "" }, { push: false });
      load();
      return;
    }
    const key = JSON.stringify(items);
    if (key !== shown) { shown = key; grid.replaceChildren(...items.map(tile)); }
    document.getElementById("gallery-empty").hidden = items.length > 0;
    if (!ok && status !== 404) setText(document.getElementById("gallery-empty"), body.error || "The gallery could not be read.");
    const pages = Math.max(1, Math.ceil(total / PER_PAGE));
    setText(document.getElementById("gallery-count"), `${total} image${total === 1 ? "" : "s"}`);
    setText(document.getElementById("page-info"), `page ${page} of ${pages}`);
    document.querySelector(".pager").hidden = pages <= 1;
    document.getElementById("prev").disabled = page <= 1;
    document.getElementById("next").disabled = page >= pages;
  }

  const go = (p) => { page = p; RF.setQuery({ scope: form.elements.scope.value, page: page > 1 ? page : "" }); load(); };
  form.addEventListener("change", () => go(1));
  document.getElementById("prev").addEventListener("click", () => go(page - 1));
  document.getElementById("next").addEventListener("click", () => go(page + 1));
  window.addEventListener("popstate", () => { fromAddress(); load(); }); // Back, Forward
  load();
  setInterval(load, 5000);
})();
