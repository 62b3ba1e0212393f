// The admin page: signs in with an admin link (the secret after `#`), then lists accounts,
// jobs and storage use through /api/admin/*. Every string from the server is set with
// textContent, never as HTML. Tokens live in sessionStorage (this tab only).
const KEY = "heaper-admin-session";
const ACTIONS = {
  approve: "approve",
  reject: "reject",
  make_admin: "make admin",
  remove_admin: "remove admin",
  revoke_tokens: "revoke tokens",
};

const $ = (id) => document.getElementById(id);

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

function saveSession(s) {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

async function body(response) {
  try {
    return await response.json();
  } catch {
    return { success: false, error: `http_${response.status}`, message: response.statusText };
  }
}

async function signInWithLink(secret) {
  const r = await fetch("api/admin/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ link: secret }),
  });
  const answer = await body(r);
  if (!r.ok) throw new Error(answer.message || answer.error || `HTTP ${r.status}`);
  return {
    access: answer.accessToken,
    refresh: answer.refreshToken,
    userId: answer.user_id,
    publicKey: answer.public_key,
  };
}

async function refreshTokens(session) {
  const r = await fetch("api/auth/refresh_token", {
    method: "POST",
    headers: { Authorization: `Bearer ${session.refresh}` },
  });
  if (!r.ok) return null;
  const answer = await body(r);
  return { ...session, access: answer.accessToken, refresh: answer.refreshToken };
}

class SignedOut extends Error {}

// fetch with the access token; an expired one is refreshed once, anything else ends the session
async function api(method, path) {
  let session = loadSession();
  if (!session) throw new SignedOut("not signed in");
  for (let attempt = 0; attempt < 2; attempt++) {
    const r = await fetch(path, { method, headers: { Authorization: `Bearer ${session.access}` } });
    if (r.status !== 401) {
      const answer = await body(r);
      if (!r.ok) throw new Error(answer.message || answer.error || `HTTP ${r.status}`);
      return answer;
    }
    const refreshed = attempt === 0 ? await refreshTokens(session) : null;
    if (!refreshed) break;
    session = refreshed;
    saveSession(session);
  }
  saveSession(null);
  throw new SignedOut("the admin session ended; run `python -m heaper_trio admin-link` again");
}

function cell(row, text, className = "") {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "";
}

function actionsFor(user, me) {
  const out = [];
  if (user.state !== "approved") out.push("approve");
  if (user.state !== "rejected" && user.id !== me) out.push("reject");
  if (!user.is_admin) out.push("make_admin");
  else if (user.id !== me) out.push("remove_admin");
  if (user.state === "approved") out.push("revoke_tokens");
  return out;
}

function renderUsers(users, me) {
  const tbody = $("users").tBodies[0];
  tbody.replaceChildren();
  for (const u of users) {
    const tr = document.createElement("tr");
    tr.dataset.userId = u.id;
    tr.dataset.publicKey = u.public_key;
    const who = cell(tr, "");
    const id = document.createElement("div");
    id.className = "mono";
    id.textContent = u.id + (u.id === me ? " (you)" : "");
    const key = document.createElement("div");
    key.className = "mono muted key";
    key.textContent = u.public_key;
    who.append(id, key);
    cell(tr, u.email);
    cell(tr, u.state, `state state-${u.state}`);
    cell(tr, u.is_admin ? "yes" : "", "admin");
    const usage = u.usage || {};
    for (const k of ["heaps", "blocks", "document_bytes", "sessions"]) cell(tr, usage[k] ?? "", "num");
    const actions = cell(tr, "");
    for (const action of actionsFor(u, me)) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.action = action;
      b.textContent = ACTIONS[action];
      b.addEventListener("click", () => act(u, action));
      actions.appendChild(b);
    }
    tbody.appendChild(tr);
  }
}

function renderJobs(answer) {
  const m = answer.media || {};
  $("media").textContent =
    `thumbnails made: ${m.jobs ?? 0}, cache hits: ${m.cache_hits ?? 0}, failed: ${m.failed_fast ?? 0}`;
  const tbody = $("jobs").tBodies[0];
  tbody.replaceChildren();
  for (const j of answer.jobs || []) {
    const tr = document.createElement("tr");
    cell(tr, when(j.started_at));
    cell(tr, j.user_id, "mono");
    cell(tr, j.kind);
    cell(tr, j.path, "mono");
    cell(tr, j.state + (j.error ? `: ${j.error}` : ""));
    cell(tr, `${j.files_done}/${j.files_seen}`, "num");
    cell(tr, j.errors, "num");
    tbody.appendChild(tr);
  }
  if (!tbody.rows.length) {
    const tr = document.createElement("tr");
    cell(tr, "no jobs in the last day").colSpan = 7;
    tbody.appendChild(tr);
  }
}

function renderStorage(answer) {
  const t = answer.totals || {};
  $("totals").textContent =
    `${answer.users} accounts on ${answer.engine}: ${t.heaps} heaps, ${t.blocks} blocks, ` +
    `${t.document_bytes} document bytes, ${t.sessions} live sessions`;
  const tbody = $("disk").tBodies[0];
  tbody.replaceChildren();
  const dir = answer.data_dir || {};
  const entries = Object.entries(dir.bytes || {}).sort((a, b) => b[1] - a[1]);
  for (const [name, bytes] of entries) {
    const tr = document.createElement("tr");
    cell(tr, name, "mono");
    cell(tr, bytes, "num");
    tbody.appendChild(tr);
  }
  if (dir.partial) {
    const tr = document.createElement("tr");
    cell(tr, "(partial: the data directory holds too many entries to count them all)").colSpan = 2;
    tbody.appendChild(tr);
  }
}

async function reload() {
  const session = loadSession();
  const [users, jobs, storage] = await Promise.all([
    api("GET", "api/admin/users"),
    api("GET", "api/admin/jobs"),
    api("GET", "api/admin/storage"),
  ]);
  renderUsers(users.users, session.userId);
  renderJobs(jobs);
  renderStorage(storage);
}

async function guarded(work) {
  try {
    await work();
  } catch (e) {
    if (e instanceof SignedOut) showSignIn();
    status(e.message, true);
  }
}

async function act(user, action) {
  await guarded(async () => {
    const answer = await api("POST", `api/admin/users/${encodeURIComponent(user.id)}/${action}`);
    status(`${ACTIONS[action]}: ${answer.user.id} is ${answer.user.state}${answer.user.is_admin ? ", admin" : ""}`);
    await reload();
  });
}

function showSignIn() {
  $("console").hidden = true;
  $("signin").hidden = false;
  $("who").textContent = "";
}

function showConsole() {
  const session = loadSession();
  $("signin").hidden = true;
  $("console").hidden = false;
  $("who").textContent = `signed in as ${session.userId}`;
}

async function start() {
  $("refresh").addEventListener("click", () => guarded(reload));
  $("signout").addEventListener("click", () => {
    saveSession(null);
    showSignIn();
    status("signed out");
  });
  // a new link pasted into this tab changes only the fragment: start over with it
  window.addEventListener("hashchange", () => location.reload());
  const secret = location.hash.slice(1);
  if (secret) {
    // the secret is used up now: keep it out of the history and of any later copy of the URL
    history.replaceState(null, "", location.pathname + location.search);
    try {
      saveSession(await signInWithLink(decodeURIComponent(secret)));
    } catch (e) {
      saveSession(null);
      showSignIn();
      status(e.message, true);
      return;
    }
  }
  if (!loadSession()) {
    showSignIn();
    return;
  }
  showConsole();
  await guarded(async () => {
    await reload();
    if (!$("status").textContent) status("ready");
  });
}

start();
