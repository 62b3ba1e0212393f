// node render.mjs DOCS_MODULE SPEC_JSON: docs.mjs's pure rendering of an OpenAPI document,
// as a string (toHTML) and as DOM (mount, on the smallest document it needs), plus searches.
// Run by tests/test_api_docs_page.py; prints one JSON object.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modulePath, specPath] = process.argv.slice(2);
const docs = await import(pathToFileURL(modulePath).href);
const spec = JSON.parse(readFileSync(specPath, "utf8"));

// mount() on a stub document, serialised the way toHTML() writes markup.
const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ENTITIES[c]);
const doc = {
  createTextNode: (text) => ({ html: () => esc(text) }),
  createElement: (tag) => {
    const attrs = [];
    const kids = [];
    return {
      setAttribute: (k, v) => attrs.push([k, v]),
      appendChild: (c) => (kids.push(c), c),
      html: () => {
        const a = attrs.map(([k, v]) => (v === "" ? ` ${k}` : ` ${k}="${esc(v)}"`)).join("");
        return `<${tag}${a}>${kids.map((c) => c.html()).join("")}</${tag}>`;
      },
    };
  },
};

const tree = docs.render(spec);
const entries = docs.operations(spec);
const search = (q) => entries.filter((e) => docs.matches(e, q)).map((e) => e.id);
console.log(
  JSON.stringify({
    html: docs.toHTML(tree),
    mounted: docs.mount(tree, doc).html(),
    ids: entries.map((e) => e.id),
    health: search("HEALTH"),
    database_health: search("get  Health DATABASE"),
    upload_chunk: search("put chunk"),
    websockets: search("websocket"),
    nothing: search("no-such-word-anywhere"),
    all: search(""),
  }),
);
