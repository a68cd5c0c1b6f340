// The API documentation page: renders openapi.json (served by the farm, nothing from a CDN).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, attrs || {});
  for (const child of children) node.append(child);
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

async function render() {
  const doc = await (await fetch("openapi.json")).json();
  const root = document.getElementById("ops");
  root.textContent = "";
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = el("details", { className: "op" });
      box.append(el("summary", {}, el("span", { className: "method" }, method), path, " — ", op.summary));
      if (op.description) box.append(el("p", {}, op.description));
      if (op.requestBody) {
        const schema = resolve(doc, op.requestBody.content["application/json"].schema);
        box.append(el("h4", {}, "Body"), el("pre", {}, JSON.stringify(schema, null, 2)));
      }
      const codes = Object.keys(op.responses).join(", ");
      box.append(el("p", {}, "Answers: " + codes));
      root.append(box);
    }
  }
}

render();
