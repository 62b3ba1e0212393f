// The API docs page: renders the server's OpenAPI document (/api/openapi.json).
//
// The rendering is pure: `render(spec)` returns a tree of plain nodes ({tag, attrs, children},
// text as strings) that `mount` turns into DOM nodes (createElement and text nodes only, never
// innerHTML) and `toHTML` into escaped markup; tests/test_api_docs_page.py runs it under node.
// Loaded as a module by docs.html; nothing runs on import outside a browser.

const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
const MAX_DEPTH = 8; // nested schemas shown inline; the raw JSON Schema is always there too

export function h(tag, attrs, ...children) {
  const kids = children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
  return { tag, attrs: attrs || {}, children: kids.map((c) => (typeof c === "object" ? c : String(c))) };
}

// Every operation of the document, in its order: {path, method, op, id, tag, websocket}.
export function operations(spec) {
  const out = [];
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const id = op.operationId || `${method}_${path.replace(/[^A-Za-z0-9]+/g, "_")}`;
      const tag = (op.tags && op.tags[0]) || "other";
      out.push({ path, method, op, id, tag, websocket: Boolean(op["x-websocket"]) });
    }
  }
  return out;
}

export function searchText(entry) {
  const params = (entry.op.parameters || []).map((p) => p.name);
  const label = entry.websocket ? "ws websocket" : entry.method;
  return [label, entry.path, entry.id, entry.tag, entry.op.summary, entry.op.description, ...params]
    .filter(Boolean)
    .join(" ")
    .toLowerCase();
}

// Whether an operation matches the search box: every word appears somewhere in it.
export function matches(entry, query) {
  const text = searchText(entry);
  return String(query || "")
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => text.includes(word));
}

function resolve(spec, schema) {
  const ref = schema && schema.$ref;
  if (typeof ref !== "string" || !ref.startsWith("#/")) return schema;
  let node = spec;
  for (const part of ref.slice(2).split("/")) node = node && node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
  return node || schema;
}

export function typeLabel(spec, schema) {
  if (!schema || typeof schema !== "object" || Object.keys(schema).length === 0) return "any";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if ("const" in schema) return `= ${JSON.stringify(schema.const)}`;
  if (schema.enum) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    if (Array.isArray(schema[key])) {
      const parts = schema[key].map((s) => typeLabel(spec, s));
      return parts.join(key === "allOf" ? " & " : " | ");
    }
  }
  let type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (!type) type = schema.properties ? "object" : schema.not ? "any" : "any";
  if (type === "array" && schema.items) type = `array of ${typeLabel(spec, schema.items)}`;
  if (schema.format) type += ` (${schema.format})`;
  if (schema.contentMediaType) type += ` (${schema.contentMediaType})`;
  return type;
}

const CONSTRAINTS = [
  "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
  "exclusiveMaximum", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
  "default",
];

function constraints(schema) {
  if (!schema || typeof schema !== "object") return [];
  const out = CONSTRAINTS.filter((k) => k in schema).map((k) => `${k}: ${JSON.stringify(schema[k])}`);
  if (schema.not && schema.not.enum) out.push(`not ${schema.not.enum.map((v) => JSON.stringify(v)).join(", ")}`);
  if (schema.additionalProperties === false) out.push("no other fields");
  return out;
}

// A schema as a nested list: its type, constraints and description, then its fields.
export function schemaView(spec, schema, depth = 0) {
  const shown = resolve(spec, schema) || {};
  const items = [];
  const fields = shown.properties || {};
  const required = new Set(shown.required || []);
  for (const [name, sub] of Object.entries(fields)) items.push(fieldView(spec, name, sub, required.has(name), depth));
  const inner = shown.type === "array" || (Array.isArray(shown.type) && shown.type.includes("array")) ? resolve(spec, shown.items) : null;
  const nested = depth < MAX_DEPTH && inner && inner.properties ? schemaView(spec, inner, depth + 1) : null;
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    for (const alt of shown[key] || []) {
      const resolved = resolve(spec, alt) || {};
      if (resolved.properties || resolved.required) {
        items.push(h("li", {}, h("span", { class: "muted" }, `${key}: `), depth < MAX_DEPTH ? schemaView(spec, alt, depth + 1) : typeLabel(spec, alt)));
      }
    }
  }
  return h(
    "div",
    { class: "schema-view" },
    h("span", { class: "type" }, typeLabel(spec, schema)),
    constraints(shown).length ? [" ", h("span", { class: "muted" }, constraints(shown).join("; "))] : null,
    shown.description ? [" — ", shown.description] : null,
    items.length ? h("ul", { class: "schema" }, items) : null,
    nested,
  );
}

function fieldView(spec, name, schema, isRequired, depth) {
  const shown = resolve(spec, schema) || {};
  const inner = shown.items ? resolve(spec, shown.items) : null;
  const deeper = shown.properties || shown.anyOf || shown.oneOf || (inner && inner.properties);
  const limits = constraints(shown);
  return h(
    "li",
    {},
    h("code", {}, name),
    isRequired ? [" ", h("span", { class: "required" }, "required")] : null,
    " ",
    h("span", { class: "type" }, typeLabel(spec, schema)),
    limits.length ? [" ", h("span", { class: "muted" }, limits.join("; "))] : null,
    shown.description ? [" — ", shown.description] : null,
    deeper && depth < MAX_DEPTH ? schemaBody(spec, shown, depth + 1) : null,
  );
}

function schemaBody(spec, schema, depth) {
  const view = schemaView(spec, schema, depth);
  return view.children.filter((c) => typeof c === "object" && (c.tag === "ul" || c.tag === "div"));
}

function rawSchema(schema) {
  return h("details", { class: "raw" }, h("summary", { class: "muted" }, "JSON Schema"), h("pre", {}, JSON.stringify(schema, null, 2)));
}

function authLabel(spec, op) {
  const security = op.security || spec.security || [];
  if (security.length === 0) return "none";
  const named = security.filter((s) => Object.keys(s).length > 0).map((s) => Object.keys(s).join(" + "));
  const optional = security.some((s) => Object.keys(s).length === 0);
  const schemes = named.map((n) => {
    const scheme = ((spec.components || {}).securitySchemes || {})[n] || {};
    return scheme.scheme === "bearer" ? `bearer token${scheme.bearerFormat ? ` (${scheme.bearerFormat})` : ""}` : n;
  });
  return (optional ? "optional: " : "") + schemes.join(" or ");
}

function parametersView(spec, params) {
  if (!params || params.length === 0) return null;
  return [
    h("h4", {}, "Parameters"),
    h(
      "table",
      {},
      h("tr", {}, h("th", {}, "name"), h("th", {}, "in"), h("th", {}, "schema")),
      params.map((raw) => {
        const p = resolve(spec, raw);
        return h(
          "tr",
          {},
          h("td", {}, h("code", {}, p.name), p.required ? [" ", h("span", { class: "required" }, "required")] : null),
          h("td", {}, p.in),
          h("td", {}, schemaView(spec, p.schema || {}), p.description ? [" ", p.description] : null),
        );
      }),
    ),
  ];
}

function contentView(spec, content) {
  return Object.entries(content || {}).map(([mime, media]) =>
    h("div", { class: "content" }, h("code", { class: "muted" }, mime), media.schema ? [schemaView(spec, media.schema), rawSchema(media.schema)] : null),
  );
}

function requestBodyView(spec, body) {
  if (!body) return null;
  const shown = resolve(spec, body);
  return [
    h("h4", {}, "Request body", shown.required ? [" ", h("span", { class: "required" }, "required")] : null),
    shown.description ? h("p", {}, shown.description) : null,
    contentView(spec, shown.content),
  ];
}

function responsesView(spec, responses) {
  const entries = Object.entries(responses || {});
  if (entries.length === 0) return null;
  return [
    h("h4", {}, "Responses"),
    h(
      "ul",
      { class: "responses" },
      entries.map(([status, raw]) => {
        const r = resolve(spec, raw);
        const headers = Object.keys(r.headers || {});
        return h(
          "li",
          {},
          h("span", { class: "status" }, status),
          " ",
          r.description || "",
          headers.length ? [" ", h("span", { class: "muted" }, `headers: ${headers.join(", ")}`)] : null,
          contentView(spec, r.content),
        );
      }),
    ),
  ];
}

export function operationView(spec, entry) {
  const { op } = entry;
  const method = entry.websocket ? "ws" : entry.method;
  return h(
    "section",
    { class: "op", id: entry.id },
    h(
      "details",
      {},
      h(
        "summary",
        {},
        h("span", { class: `method ${method}` }, method.toUpperCase()),
        h("code", { class: "path" }, entry.path),
        h("span", { class: "summary" }, op.summary || ""),
        op.deprecated ? h("span", { class: "badge deprecated" }, "deprecated") : null,
        h("a", { class: "permalink", href: `#${entry.id}`, title: "Link to this route" }, "#"),
      ),
      h(
        "div",
        { class: "op-body" },
        op.description ? h("p", {}, op.description) : null,
        h("p", { class: "muted" }, "auth: ", authLabel(spec, op), " · operationId: ", h("code", {}, entry.id)),
        entry.websocket ? h("p", {}, "A WebSocket: a GET upgrade request answered with 101.") : null,
        parametersView(spec, op.parameters),
        requestBodyView(spec, op.requestBody),
        responsesView(spec, op.responses),
      ),
    ),
  );
}

// The whole page body: info, a table of contents by tag, then each tag's operations.
export function render(spec) {
  const entries = operations(spec);
  const tags = [];
  for (const t of spec.tags || []) if (!tags.includes(t.name)) tags.push(t.name);
  for (const e of entries) if (!tags.includes(e.tag)) tags.push(e.tag);
  const info = spec.info || {};
  return h(
    "div",
    { class: "spec" },
    info.description ? h("p", { class: "description" }, info.description) : null,
    h("nav", { class: "toc" }, tags.map((t) => h("a", { href: `#tag-${t}` }, t))),
    tags.map((t) =>
      h(
        "section",
        { class: "tag", id: `tag-${t}` },
        h("h2", {}, t),
        entries.filter((e) => e.tag === t).map((e) => operationView(spec, e)),
      ),
    ),
  );
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

export function toHTML(node) {
  if (typeof node === "string") return escape(node);
  const attrs = Object.entries(node.attrs)
    .filter(([, v]) => v !== false && v !== null && v !== undefined)
    .map(([k, v]) => (v === true ? ` ${k}` : ` ${k}="${escape(v)}"`))
    .join("");
  return `<${node.tag}${attrs}>${node.children.map(toHTML).join("")}</${node.tag}>`;
}

export function mount(node, doc) {
  if (typeof node === "string") return doc.createTextNode(node);
  const el = doc.createElement(node.tag);
  for (const [k, v] of Object.entries(node.attrs)) {
    if (v === true) el.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const child of node.children) el.appendChild(mount(child, doc));
  return el;
}

// -- the browser -------------------------------------------------------------------------------

function openTarget(showAll) {
  const id = decodeURIComponent(location.hash.slice(1));
  const el = id ? document.getElementById(id) : null;
  if (!el) return;
  if (el.hidden || (el.parentElement && el.parentElement.hidden)) showAll(); // filtered out
  const details = el.querySelector(":scope > details");
  if (details) details.open = true;
  el.scrollIntoView();
}

function filter(entries, query) {
  let shown = 0;
  for (const entry of entries) {
    const el = document.getElementById(entry.id);
    const hit = matches(entry, query);
    if (el) el.hidden = !hit;
    if (hit) shown += 1;
  }
  for (const section of document.querySelectorAll("section.tag")) {
    section.hidden = !section.querySelector("section.op:not([hidden])");
  }
  const count = document.getElementById("count");
  if (count) count.textContent = `${shown} of ${entries.length} routes`;
}

async function main() {
  const app = document.getElementById("app");
  let spec;
  try {
    const answer = await fetch("openapi.json", { headers: { Accept: "application/json" } });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    spec = await answer.json();
  } catch (e) {
    app.replaceChildren(mount(h("p", { class: "error" }, `Could not load openapi.json: ${e.message}`), document));
    return;
  }
  const info = spec.info || {};
  const title = `${info.title || "API"} ${info.version || ""}`.trim();
  document.title = `${title} · API docs`;
  document.getElementById("title").textContent = `${title} API`;
  document.getElementById("info").textContent = `OpenAPI ${spec.openapi || ""}`;
  const entries = operations(spec);
  app.replaceChildren(mount(render(spec), document));
  const search = document.getElementById("search");
  const params = new URLSearchParams(location.search);
  if (params.has("q")) search.value = params.get("q");
  search.addEventListener("input", () => filter(entries, search.value));
  filter(entries, search.value);
  const showAll = () => {
    search.value = "";
    filter(entries, "");
  };
  window.addEventListener("hashchange", () => openTarget(showAll));
  openTarget(showAll);
}

if (typeof window !== "undefined" && typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
}
