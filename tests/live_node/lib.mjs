// Shared helpers of the live-sync drivers (live_client.mjs) and the /ws benchmark
// (bench_load.mjs): stock @hocuspocus/provider sockets whose frames are traced, waiting,
// the block schema, and the HTTP sync API.
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import * as Y from 'yjs'

export { Y }

export const b64 = (bytes) => Buffer.from(bytes).toString('base64')
export const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const started = performance.now()
export const now = () => performance.now() - started

export function fail (message) {
  throw new Error(message)
}

// -- Hocuspocus frames ------------------------------------------------------------------------
// frame = varString(document name) . varUint(type) . body; Ping/Pong are one byte, no name.

export const T = {
  Sync: 0, Awareness: 1, Auth: 2, QueryAwareness: 3, SyncReply: 4, Stateless: 5,
  BroadcastStateless: 6, Close: 7, SyncStatus: 8, Ping: 9, Pong: 10
}
const TYPE_NAMES = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]))
const SYNC_NAMES = ['step1', 'step2', 'update']
const AUTH_NAMES = ['Token', 'PermissionDenied', 'Authenticated']

/** A frame as a small readable object (tokens shortened; never throws). */
export function describeFrame (data) {
  const bytes = toBytes(data)
  if (bytes.length === 1 && (bytes[0] === T.Ping || bytes[0] === T.Pong)) {
    return { type: TYPE_NAMES[bytes[0]], len: 1 }
  }
  const out = { len: bytes.length }
  try {
    const d = decoding.createDecoder(bytes)
    out.doc = decoding.readVarString(d)
    const type = decoding.readVarUint(d)
    out.type = TYPE_NAMES[type] ?? `type${type}`
    if (type === T.Sync || type === T.SyncReply) {
      const sub = decoding.readVarUint(d)
      out.sub = SYNC_NAMES[sub] ?? `sub${sub}`
      out.payload = decoding.readVarUint8Array(d).length
    } else if (type === T.Awareness) {
      const a = decoding.createDecoder(decoding.readVarUint8Array(d))
      const n = decoding.readVarUint(a)
      out.clients = []
      for (let i = 0; i < n; i++) {
        const client = decoding.readVarUint(a)
        const clock = decoding.readVarUint(a)
        const state = decoding.readVarString(a)
        out.clients.push([client, clock, state === 'null' ? null : state.slice(0, 60)])
      }
    } else if (type === T.Auth) {
      const sub = decoding.readVarUint(d)
      out.sub = AUTH_NAMES[sub] ?? `auth${sub}`
      if (decoding.hasContent(d)) {
        const s = decoding.readVarString(d)
        out.text = sub === 0 ? `<${s.length} chars>` : s
      }
      if (decoding.hasContent(d)) out.version = decoding.readVarString(d)
    } else if (type === T.Stateless || type === T.Close) {
      if (decoding.hasContent(d)) out.text = decoding.readVarString(d).slice(0, 200)
    } else if (type === T.SyncStatus) {
      out.applied = decoding.readVarInt(d) === 1
    }
  } catch (e) {
    out.undecodable = String(e)
  }
  return out
}

export function toBytes (data) {
  if (data instanceof Uint8Array) return data
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  return new Uint8Array(data)
}

// -- traced sockets ---------------------------------------------------------------------------

/** Every frame of every socket this process opened, in order (capped). */
export const trace = []
const TRACE_CAP = 3000
let socketCount = 0

function record (ws, dir, data) {
  const frame = { t: Math.round(now()), sock: ws.traceName, dir, ...describeFrame(data) }
  // Per socket instance: updates sent vs SyncStatus acks received, per document.
  const acks = ws.acks
  if (frame.doc !== undefined) {
    const a = acks[frame.doc] ??= { sent: 0, acked: 0, refused: 0 }
    if (dir === 'out' && frame.type === 'Sync' && (frame.sub === 'step2' || frame.sub === 'update')) a.sent++
    if (dir === 'in' && frame.type === 'SyncStatus') frame.applied ? a.acked++ : a.refused++
  }
  if (trace.length < TRACE_CAP) trace.push(frame)
}

/** A `ws` WebSocket whose frames land in `trace`; one class per logical socket (label). */
function tracedWebSocketClass (label) {
  return class TracedWebSocket extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols)
      socketCount++
      this.traceName = `${label}#${socketCount}`
      this.acks = {}
      this.on('message', (data) => record(this, 'in', data))
      this.on('open', () => trace.length < TRACE_CAP && trace.push({ t: Math.round(now()), sock: this.traceName, dir: '--', type: 'open' }))
      this.on('error', (err) => trace.length < TRACE_CAP && trace.push({
        t: Math.round(now()), sock: this.traceName, dir: '--', type: 'error', error: String(err?.message ?? err)
      }))
      this.on('close', (code, reason) => trace.length < TRACE_CAP && trace.push({
        t: Math.round(now()), sock: this.traceName, dir: '--', type: 'close', code, reason: reason.toString()
      }))
    }

    send (data, ...rest) {
      record(this, 'out', data)
      return super.send(data, ...rest)
    }
  }
}

/** One HocuspocusProviderWebsocket (one TCP connection, reconnecting as the stock one does). */
export function openSocket (url, label) {
  const socket = new HocuspocusProviderWebsocket({ url, WebSocketPolyfill: tracedWebSocketClass(label) })
  socket.label = label
  socket.closes = []
  socket.on('close', ({ event }) => socket.closes.push({ t: Math.round(now()), code: event?.code, reason: event?.reason }))
  return socket
}

/** A provider for one document on a shared socket; its events are kept on it. */
export function openProvider (socket, name, token, { doc = new Y.Doc(), label = name } = {}) {
  const provider = new HocuspocusProvider({ websocketProvider: socket, name, document: doc, token })
  provider.label = label
  provider.events = { authenticated: [], authenticationFailed: [], synced: 0, stateless: [] }
  provider.on('authenticated', ({ scope }) => provider.events.authenticated.push(scope))
  provider.on('authenticationFailed', ({ reason }) => provider.events.authenticationFailed.push(reason))
  provider.on('synced', () => provider.events.synced++)
  provider.on('stateless', ({ payload }) => provider.events.stateless.push(payload))
  provider.attach() // with a shared websocketProvider, 4.x providers attach only when told
  return provider
}

/** Updates the current socket instance of `socket` sent for `provider` that are not yet acked. */
export function unacked (socket, provider) {
  const ws = socket.webSocket
  if (!ws || !ws.acks) return Infinity
  const a = ws.acks[provider.effectiveName]
  return a ? a.sent - a.acked : 0
}

/** Stored: the provider counts nothing unsynced and every update frame got SyncStatus(true). */
export const stored = (socket, provider) =>
  provider.isSynced && !provider.hasUnsyncedChanges && unacked(socket, provider) === 0

export async function waitFor (what, predicate, timeoutMs = 10000, stepMs = 5) {
  const t0 = now()
  while (true) {
    const value = predicate()
    if (value) return now() - t0
    if (now() - t0 > timeoutMs) fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(stepMs)
  }
}

// -- block documents (CONTRACT.md "Block document schema") -------------------------------------

export function addParagraph (doc, text, fragment = 'content_v0') {
  doc.transact(() => {
    const p = new Y.XmlElement('paragraph')
    p.insert(0, [new Y.XmlText(text)])
    const f = doc.getXmlFragment(fragment)
    f.insert(f.length, [p])
  })
}

/** Type text at the end of the first paragraph's first text run (made if missing). */
export function typeText (doc, text) {
  doc.transact(() => {
    const f = doc.getXmlFragment('content_v0')
    if (f.length === 0) f.insert(0, [new Y.XmlElement('paragraph')])
    const p = f.get(0)
    let run = p.toArray().find((n) => n instanceof Y.XmlText)
    if (!run) {
      run = new Y.XmlText()
      p.insert(p.length, [run])
    }
    run.insert(run.length, text)
  })
}

export function setMeta (doc, key, value) {
  doc.getMap('meta_v0').set(key, value)
}

export function views (doc) {
  return {
    title: doc.getXmlFragment('title_v0').toString(),
    content: doc.getXmlFragment('content_v0').toString(),
    meta: doc.getMap('meta_v0').toJSON(),
    relations: doc.getMap('relations_v1').toJSON(),
    state_vector: b64(Y.encodeStateVector(doc))
  }
}

/** JSON with object keys sorted: Y.Map keys come in local insertion order, which differs. */
export const canonical = (value) => JSON.stringify(value, (_k, v) =>
  v && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
    : v)

export const same = (a, b) => canonical(views(a)) === canonical(views(b))

export function assertSame (a, b, what) {
  const [va, vb] = [canonical(views(a)), canonical(views(b))]
  if (va !== vb) fail(`${what}: documents differ\n${va}\n${vb}`)
}

// -- HTTP sync API ----------------------------------------------------------------------------

export async function api (args, method, path, body) {
  const r = await fetch(args.http_url + path, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${args.token}` },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const answer = await r.text()
  if (!r.ok) fail(`${method} ${path} answered ${r.status}: ${answer}`)
  return JSON.parse(answer)
}

/** The block as the server stores it, pulled over HTTP into a fresh Y.Doc. */
export async function pull (args, blockId) {
  const answer = await api(args, 'POST', '/api/sync/pull', { blocks: [{ block_id: blockId }] })
  const [result] = answer.blocks
  if (result.status !== 'ok') fail(`pull ${blockId}: ${JSON.stringify(result)}`)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, unb64(result.update ?? result.full_state))
  return doc
}

// -- raw Hocuspocus frames (the benchmark's subscribers) ---------------------------------------

export function frame (docName, type, write) {
  const e = encoding.createEncoder()
  encoding.writeVarString(e, docName)
  encoding.writeVarUint(e, type)
  write?.(e)
  return encoding.toUint8Array(e)
}

export const authFrame = (docName, token) => frame(docName, T.Auth, (e) => {
  encoding.writeVarUint(e, 0)
  encoding.writeVarString(e, token)
})

export const syncFrame = (docName, sub, payload) => frame(docName, T.Sync, (e) => {
  encoding.writeVarUint(e, sub)
  encoding.writeVarUint8Array(e, payload)
})

// -- output -----------------------------------------------------------------------------------

export const dump = (value) => JSON.stringify(value, (_k, v) =>
  typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? b64(v) : v)
