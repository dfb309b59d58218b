// Renders /openapi.json as a readable reference: endpoints, parameters, form fields, responses, curl examples.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// Text with `inline code` spans, as DOM nodes (never innerHTML: descriptions are data).
function prose(tag, text) {
  const node = el(tag);
  String(text || "").split("`").forEach((part, index) => node.append(index % 2 ? el("code", { text: part }) : part));
  return node;
}

function resolve(schema, spec) {
  if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()] || {};
  return schema || {};
}

function typeOf(schema, spec) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  const options = schema.anyOf || schema.oneOf;
  if (options) {
    const kinds = options.filter((s) => s.type !== "null").map((s) => typeOf(s, spec));
    return kinds.join(" | ") + (kinds.length < options.length ? " (optional)" : "");
  }
  if (schema.type === "array") return `array of ${typeOf(schema.items, spec)}`;
  if (schema.format === "binary" || schema.contentMediaType === "application/octet-stream") return "file";
  return schema.type || "any";
}

function table(header, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...header.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", { text: String(cell) }))))));
}

function curl(path, method, operation, spec) {
  const lines = [`curl -sS -X ${method.toUpperCase()} "http://127.0.0.1:8000${path}"`];
  if (operation.security || spec.components?.securitySchemes) lines.push('  -H "Authorization: Bearer $PROTLOC_TOKEN"');
  const body = operation.requestBody?.content?.["multipart/form-data"];
  if (body) {
    const schema = resolve(body.schema, spec);
    const names = Object.keys(schema.properties || {});
    if (names.includes("files")) {
      lines.push('  -F "files=@A1_red.png" -F "files=@A1_green.png" -F "files=@A1_blue.png" -F "files=@A1_yellow.png"');
      lines.push('  -F "files=@B2.tif"');
    } else {
      lines.push('  -F "red=@A1_red.png" -F "green=@A1_green.png" -F "blue=@A1_blue.png" -F "yellow=@A1_yellow.png"');
    }
  }
  if (path === "/explain") lines.push("  -o overlay.png");
  return lines.join(" \\\n");
}

function renderOperation(path, method, operation, spec) {
  const id = `${method}-${path.replace(/[^a-z0-9]+/gi, "-")}`;
  const card = el("section", { class: "card operation", id },
    el("h2", {}, el("span", { class: `method ${method}`, text: method.toUpperCase() }),
      el("span", { class: "path", text: path }), el("span", { class: "summary", text: operation.summary || "" })));
  if (operation.description) card.append(prose("p", operation.description));
  const parameters = operation.parameters || [];
  if (parameters.length) {
    card.append(el("h3", { text: "Query parameters" }));
    card.append(table(["name", "type", "default", "description"], parameters.map((p) => [
      p.name + (p.required ? " (required)" : ""), typeOf(p.schema, spec),
      p.schema && p.schema.default !== undefined ? JSON.stringify(p.schema.default) : "", p.description || ""])));
  }
  const body = operation.requestBody?.content?.["multipart/form-data"];
  if (body) {
    const schema = resolve(body.schema, spec);
    const required = new Set(schema.required || []);
    card.append(el("h3", { text: "Form fields (multipart/form-data)" }));
    card.append(table(["field", "type", "description"], Object.entries(schema.properties || {}).map(([name, s]) => [
      name + (required.has(name) ? " (required)" : ""), typeOf(s, spec), s.description || ""])));
  }
  card.append(el("h3", { text: "Responses" }));
  card.append(table(["status", "body", "meaning"], Object.entries(operation.responses || {}).map(([status, r]) => {
    const content = r.content || {};
    const kind = Object.entries(content).map(([type, c]) => `${type}${c.schema ? ` (${typeOf(c.schema, spec)})` : ""}`);
    return [status, kind.join(", "), r.description || ""];
  })));
  card.append(el("h3", { text: "Example" }), el("pre", {}, el("code", { text: curl(path, method, operation, spec) })));
  return [card, el("li", {}, el("a", { href: `#${id}`, text: `${method.toUpperCase()} ${path}` }))];
}

async function main() {
  let spec;
  try {
    const response = await fetch("/openapi.json");
    spec = await response.json();
  } catch (error) {
    $("intro").textContent = `Cannot load /openapi.json: ${error.message}`;
    return;
  }
  $("api-version").textContent = `${spec.info.title} ${spec.info.version} · OpenAPI ${spec.openapi}`;
  $("intro").replaceChildren(el("h2", { text: spec.info.summary || spec.info.title }),
    prose("p", spec.info.description));
  const operations = [];
  const toc = [];
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const [card, entry] = renderOperation(path, method, operation, spec);
      operations.push(card);
      toc.push(entry);
    }
  }
  $("operations").replaceChildren(...operations);
  $("toc").replaceChildren(...toc);
  const schemas = Object.entries(spec.components?.schemas || {})
    .filter(([name]) => !name.startsWith("Body_") && !name.includes("Validation"))
    .map(([name, schema]) => el("details", {}, el("summary", {}, el("span", { class: "schema-name", text: name }),
      schema.description ? ` · ${schema.description}` : ""),
      table(["field", "type", "description"], Object.entries(schema.properties || {}).map(([field, s]) => [
        field + ((schema.required || []).includes(field) ? "" : " (optional)"), typeOf(s, spec), s.description || ""]))));
  $("schemas").replaceChildren(...schemas);
}

document.addEventListener("DOMContentLoaded", main);
