// node fake_browser.mjs DOCS_MODULE SPEC_JSON: docs.mjs's page script (main) in a fake browser,
// just enough DOM for it: the page's elements, fetch answering SPEC_JSON, location with
// ?q=heap and #post_api_heap_count. Then it types in the search box and follows a link.
// Run by tests/test_api_docs_page.py; prints one JSON object.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modulePath, specPath] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(specPath, "utf8"));

class Element {
  constructor(tag) {
    this.tag = tag;
    this.attrs = {};
    this.children = [];
    this.listeners = {};
    this.open = false;
    this.value = "";
    this.text = null;
    this.parentElement = null;
  }
  setAttribute(k, v) {
    this.attrs[k] = String(v);
  }
  appendChild(child) {
    child.parentElement = this;
    this.children.push(child);
    return child;
  }
  replaceChildren(...kids) {
    this.children = [];
    for (const k of kids) this.appendChild(k);
  }
  set textContent(t) {
    this.children = [];
    this.text = String(t);
  }
  get textContent() {
    return this.text ?? this.children.map((c) => c.textContent).join("");
  }
  set hidden(v) {
    if (v) this.attrs.hidden = "";
    else delete this.attrs.hidden;
  }
  get hidden() {
    return "hidden" in this.attrs;
  }
  get id() {
    return this.attrs.id;
  }
  addEventListener(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }
  *walk() {
    for (const c of this.children) {
      if (c instanceof Element) {
        yield c;
        yield* c.walk();
      }
    }
  }
  is(selector) {
    const m = selector.match(/^(\w+)(?:\.([\w-]+))?(:not\(\[hidden\]\))?$/);
    if (!m) throw new Error(`selector not faked: ${selector}`);
    const classes = (this.attrs.class || "").split(" ");
    return this.tag === m[1] && (!m[2] || classes.includes(m[2])) && (!m[3] || !this.hidden);
  }
  querySelectorAll(selector) {
    return [...this.walk()].filter((n) => n.is(selector));
  }
  querySelector(selector) {
    if (selector.startsWith(":scope > ")) {
      const own = selector.slice(":scope > ".length);
      return this.children.find((c) => c instanceof Element && c.is(own)) || null;
    }
    return this.querySelectorAll(selector)[0] || null;
  }
  scrollIntoView() {
    globalThis.scrolledTo = this.id;
  }
}

class Text {
  constructor(text) {
    this.textContent = text;
  }
}

const body = new Element("body");
for (const id of ["title", "info", "count", "app", "search"]) {
  body.appendChild(new Element(id === "search" ? "input" : "p")).setAttribute("id", id);
}
const byId = (id) => [...body.walk()].find((n) => n.id === id) || null;
const windowListeners = {};
const fetched = [];
globalThis.document = {
  readyState: "complete",
  title: "",
  createElement: (tag) => new Element(tag),
  createTextNode: (text) => new Text(text),
  getElementById: byId,
  querySelectorAll: (selector) => body.querySelectorAll(selector),
};
globalThis.window = { addEventListener: (t, fn) => (windowListeners[t] ||= []).push(fn) };
globalThis.location = { search: "?q=heap", hash: "#post_api_heap_count" };
globalThis.fetch = async (url, init) => {
  fetched.push([url, init]);
  return { ok: true, status: 200, json: async () => spec };
};

const docs = await import(pathToFileURL(modulePath).href); // runs main()
for (let i = 0; i < 500 && !byId("count").textContent; i++) {
  await new Promise((resolve) => setTimeout(resolve, 10));
}

const search = byId("search");
const ops = () => document.querySelectorAll("section.op");
const visible = () => ops().filter((s) => !s.hidden).map((s) => s.id);
const hiddenTags = () => document.querySelectorAll("section.tag").filter((s) => s.hidden);
const opened = () => ops().filter((s) => s.querySelector(":scope > details").open).map((s) => s.id);
const type = (text) => {
  search.value = text;
  for (const fn of search.listeners.input) fn();
};
const follow = (hash) => {
  location.hash = hash;
  for (const fn of windowListeners.hashchange) fn();
};
const out = { fetched, title: document.title, heading: byId("title").textContent };
out.total = docs.operations(spec).length;
out.at_load = {
  search: search.value,
  visible: visible(),
  count: byId("count").textContent,
  opened: opened(),
  scrolled: globalThis.scrolledTo,
};
type("health database");
out.searched = { visible: visible(), hidden_tags: hiddenTags().length, count: byId("count").textContent };
follow("#post_api_me"); // filtered out: the filter is cleared to show it
out.followed = { search: search.value, visible: visible().length, opened: opened() };
out.followed.scrolled = globalThis.scrolledTo;
console.log(JSON.stringify(out));
