#!/usr/bin/env node
// Load generator of scripts/bench_ws.py: one writer and N subscribers on ONE document of a
// Hocuspocus-protocol server (heaper_trio's /ws or a stock @hocuspocus/server), all in this
// process, so the same code loads both servers. Config as JSON on stdin; prints ONE JSON
// object on stdout, progress on stderr.
//
// Writer: a stock HocuspocusProvider (npm `ws`), typing `@@<seq>@@ ` at the end of a paragraph
// of content_v0; it keeps the send time of every seq. Its SyncStatus acks are timed too (FIFO:
// the server acks in order), which for heaper_trio is the durable-commit latency.
// Subscribers: raw `ws` clients speaking the frames a provider sends (Auth token, Sync step1
// with an empty state vector, an empty step2 when the server asks, Pong on Ping), without
// awareness and without a Y.Doc: 1,000 providers would each apply every update to their own
// Y.Doc in this one process, and the generator would measure itself. A subscriber scans each
// Sync update frame for `@@<seq>@@` (Yjs v1 stores inserted strings verbatim) and records
// now - sent[seq]: the delivery latency, on one clock.
//
// Per run: `memory` first (fresh server): RSS of the server (VmRSS of /proc/<pid>/status)
// before and after `mem_conns` subscribers are connected, synced and idle for `idle_s`; then
// for each N: connect N subscribers; `latency`: the writer sends at `rate` updates/s for
// `duration` s; `throughput`: closed loop, at most `window` updates in flight (sent and not
// yet received by all N), for `duration` s. Server CPU from /proc/<pid>/stat around each phase.
import { readFileSync, readdirSync } from 'node:fs'
import * as decoding from 'lib0/decoding'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import { T, Y, authFrame, sleep, syncFrame } from './lib.mjs'

const cfg = JSON.parse(readFileSync(0, 'utf8'))
const log = (msg) => process.stderr.write(`[bench_load] ${msg}\n`)
const clock = () => performance.now()
const EMPTY_SV = new Uint8Array([0])
const EMPTY_UPDATE = new Uint8Array([0, 0])
const PONG = new Uint8Array([T.Pong])
// Offer permessage-deflate (the `ws` default, as browsers do) or not; whether it is used is
// then the server's choice (scripts/bench_ws.py --compression sets both sides alike).
const DEFLATE = Boolean(cfg.per_message_deflate)
const MARK = /@@(\d+)@@/g

// -- the server process -----------------------------------------------------------------------

function rssKb () {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${cfg.server_pid}/status`, 'utf8'))
  return m ? Number(m[1]) : null
}

/** utime + stime of the server and of its living descendants (``--workers``), in seconds. */
function serverCpuS (pid = cfg.server_pid) {
  let raw
  try {
    raw = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return 0 // gone meanwhile
  }
  const f = raw.slice(raw.lastIndexOf(')') + 2).split(' ')
  let total = (Number(f[11]) + Number(f[12])) / cfg.clk_tck
  let tasks = []
  try {
    tasks = readdirSync(`/proc/${pid}/task`)
  } catch {}
  for (const task of tasks) {
    let children = ''
    try {
      children = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8')
    } catch {}
    for (const child of children.split(' ').filter(Boolean)) total += serverCpuS(child)
  }
  return total
}

/** Run `fn`, return its result with the server's and this process's CPU over it. */
async function measured (fn) {
  const [cpu0, me0, t0] = [serverCpuS(), process.cpuUsage(), clock()]
  const result = await fn()
  const elapsed = (clock() - t0) / 1000
  const me = process.cpuUsage(me0)
  const cpu = serverCpuS() - cpu0
  const all = result.expected_deliveries - result.lost_deliveries
  return {
    ...result,
    elapsed_s: round(elapsed),
    server_cpu_s: round(cpu),
    server_cpu_us_per_delivery: all ? round(cpu * 1e6 / all, 1) : null,
    loadgen_cpu_util: round((me.user + me.system) / 1e6 / elapsed)
  }
}

const round = (x, digits = 3) => x === null || x === undefined ? x : Number(x.toFixed(digits))

function percentiles (samples) {
  if (!samples.length) return { p50_ms: null, p90_ms: null, p99_ms: null, max_ms: null }
  const s = Float64Array.from(samples).sort()
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
  return { p50_ms: round(at(0.5)), p90_ms: round(at(0.9)), p99_ms: round(at(0.99)), max_ms: round(s[s.length - 1]) }
}

// -- deliveries -------------------------------------------------------------------------------

const sent = [] // seq -> send time (ms)
const delivered = [] // seq -> subscribers that got it
let samples = null // latencies of the current phase (ms), or null between phases
let deliveries = 0
let lastDeliveryAt = 0
let onFullyDelivered = null
let subscriberCount = 0
const problems = []

function deliver (seq) {
  const t = sent[seq]
  if (t === undefined) return
  delivered[seq] = (delivered[seq] ?? 0) + 1
  deliveries++
  lastDeliveryAt = clock()
  samples?.push(lastDeliveryAt - t)
  if (delivered[seq] === subscriberCount) onFullyDelivered?.(seq)
}

class Subscriber {
  constructor (id) {
    this.id = id
    this.synced = false
    this.seen = new Set() // seqs this subscriber got (a merged or repeated update counts once)
  }

  open () {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(cfg.ws_url, { perMessageDeflate: DEFLATE })
      this.ws = ws
      const timer = setTimeout(() => reject(new Error(`subscriber ${this.id}: not synced after 30 s`)), 30000)
      ws.on('open', () => {
        ws.send(authFrame(cfg.doc, cfg.token))
        ws.send(syncFrame(cfg.doc, 0, EMPTY_SV))
      })
      ws.on('message', (data) => {
        try {
          this.onMessage(data, () => { clearTimeout(timer); resolve() }, reject)
        } catch (e) {
          problems.push(`subscriber ${this.id}: ${e}`)
        }
      })
      ws.on('error', (e) => { clearTimeout(timer); reject(e) })
      ws.on('close', (code) => {
        this.closed = true
        if (!this.synced) { clearTimeout(timer); reject(new Error(`subscriber ${this.id}: closed ${code} before sync`)) }
        if (!this.closing) problems.push(`subscriber ${this.id}: server closed the socket (${code})`)
      })
    })
  }

  onMessage (data, synced, refused) {
    if (data.length === 1 && data[0] === T.Ping) return this.ws.send(PONG)
    const d = decoding.createDecoder(data)
    decoding.readVarString(d)
    const type = decoding.readVarUint(d)
    if (type === T.Sync || type === T.SyncReply) {
      const sub = decoding.readVarUint(d)
      const payload = decoding.readVarUint8Array(d)
      if (sub === 0) {
        this.ws.send(syncFrame(cfg.doc, 1, EMPTY_UPDATE)) // we have nothing the server lacks
      } else if (sub === 1) {
        if (!this.synced) { this.synced = true; synced() }
      } else if (sub === 2) {
        const text = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('latin1')
        for (const m of text.matchAll(MARK)) {
          const seq = Number(m[1])
          if (!this.seen.has(seq)) { this.seen.add(seq); deliver(seq) }
        }
      }
    } else if (type === T.Auth) {
      if (decoding.readVarUint(d) === 1) refused(new Error(`subscriber ${this.id}: PermissionDenied ${decoding.readVarString(d)}`))
    }
  }

  close () {
    this.closing = true
    if (this.closed) return Promise.resolve()
    return new Promise((resolve) => {
      this.ws.once('close', resolve)
      this.ws.close()
      setTimeout(() => { this.ws.terminate(); resolve() }, 5000)
    })
  }
}

async function connectSubscribers (n) {
  const subs = Array.from({ length: n }, (_, i) => new Subscriber(i))
  const t0 = clock()
  let failures = 0
  for (let i = 0; i < n; i += cfg.connect_parallel) {
    const wave = subs.slice(i, i + cfg.connect_parallel)
    const results = await Promise.allSettled(wave.map((s) => s.open()))
    for (const r of results) {
      if (r.status === 'rejected') { failures++; if (failures <= 5) problems.push(String(r.reason)) }
    }
  }
  return { subs, connect_s: round((clock() - t0) / 1000), failures }
}

const closeAll = (subs) => Promise.all(subs.map((s) => s.close()))

// -- the writer -------------------------------------------------------------------------------

let acks = 0
const ackQueue = [] // send times of updates not yet acked (the server acks in order)
let ackSamples = null

class CountingWebSocket extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, { perMessageDeflate: DEFLATE })
    this.on('message', (data) => {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data
      if (bytes.length < 2) return
      const d = decoding.createDecoder(bytes)
      decoding.readVarString(d)
      if (decoding.readVarUint(d) === T.SyncStatus) {
        acks++
        const t = ackQueue.shift()
        if (t !== undefined) ackSamples?.push(clock() - t)
      }
    })
  }
}

const socket = new HocuspocusProviderWebsocket({ url: cfg.ws_url, WebSocketPolyfill: CountingWebSocket })
const writer = new HocuspocusProvider({ websocketProvider: socket, name: cfg.doc, token: cfg.token })
writer.attach()
let text = null
let seq = 0

function send () {
  const s = seq++
  sent[s] = clock()
  ackQueue.push(sent[s])
  text.insert(text.length, `@@${s}@@ `)
  return s
}

// -- phases -----------------------------------------------------------------------------------

function startPhase () {
  samples = []
  ackSamples = []
  deliveries = 0
  return { first: seq, acks0: acks }
}

function undelivered (mark, n) {
  let lost = 0
  for (let s = mark.first; s < seq; s++) lost += n - (delivered[s] ?? 0)
  return lost
}

function endPhase (mark, durationS, n) {
  const count = seq - mark.first
  const lost = undelivered(mark, n)
  const out = {
    updates_sent: count,
    deliveries,
    expected_deliveries: count * n,
    lost_deliveries: lost,
    deliveries_per_s: round(deliveries / durationS, 1),
    updates_fully_delivered_per_s: round(Array.from({ length: count }, (_, i) => delivered[mark.first + i] ?? 0)
      .filter((c) => c >= n).length / durationS, 1),
    latency: percentiles(samples),
    writer_acks: acks - mark.acks0,
    writer_ack_latency: percentiles(ackSamples)
  }
  samples = null
  ackSamples = null
  return out
}

async function waitAllDelivered (n, from, timeoutMs) {
  const t0 = clock()
  while (clock() - t0 < timeoutMs) {
    let done = true
    for (let s = from; s < seq && done; s++) done = (delivered[s] ?? 0) >= n
    if (done) return
    await sleep(20)
  }
}

async function latencyPhase (n) {
  return measured(async () => {
    const mark = startPhase()
    const interval = 1000 / cfg.rate
    const t0 = clock()
    let next = t0
    while (clock() - t0 < cfg.duration * 1000) {
      send()
      next += interval
      await sleep(Math.max(0, next - clock()))
    }
    const sendEnd = clock()
    await waitAllDelivered(n, mark.first, 5000) // stragglers count: first send to last delivery
    return { rate: cfg.rate, ...endPhase(mark, (Math.max(lastDeliveryAt, sendEnd) - t0) / 1000, n) }
  })
}

async function throughputPhase (n) {
  return measured(async () => {
    const mark = startPhase()
    let inFlight = 0
    let stop = false
    const t0 = clock()
    const oldest = new Map() // seq -> send time, of the in-flight ones
    onFullyDelivered = (s) => {
      if (!oldest.delete(s)) return
      inFlight--
      if (!stop) fill()
    }
    const fill = () => {
      while (inFlight < cfg.window) {
        oldest.set(send(), clock())
        inFlight++
      }
    }
    fill()
    let released = 0
    while (clock() - t0 < cfg.duration * 1000) {
      await sleep(50)
      for (const [s, t] of oldest) { // never stall on a lost delivery: give up after 5 s
        if (clock() - t > 5000) { oldest.delete(s); inFlight--; released++ }
      }
      fill()
    }
    stop = true
    const windowS = (clock() - t0) / 1000
    const inWindow = deliveries
    const result = endPhase(mark, windowS, n)
    result.deliveries = inWindow
    result.deliveries_per_s = round(inWindow / windowS, 1)
    onFullyDelivered = null
    await waitAllDelivered(n, mark.first, 5000)
    result.lost_deliveries = undelivered(mark, n) // after the stragglers came in
    return { window: cfg.window, released_stalled_updates: released, ...result }
  })
}

async function main () {
  const out = { config: { ...cfg, token: undefined }, problems }
  const t0 = clock()
  while (!writer.isSynced) {
    if (clock() - t0 > 15000) throw new Error('the writer did not sync within 15 s')
    await sleep(10)
  }
  writer.document.transact(() => {
    const p = new Y.XmlElement('paragraph')
    text = new Y.XmlText('Benchmark: ')
    p.insert(0, [text])
    writer.document.getXmlFragment('content_v0').insert(0, [p])
    writer.document.getMap('meta_v0').set('type', 'document')
  })
  while (writer.hasUnsyncedChanges) await sleep(10)
  out.writer_ready_ms = round(clock() - t0)

  if (cfg.mem_conns > 0) {
    log(`memory: ${cfg.mem_conns} idle connections`)
    await sleep(1000)
    const before = rssKb()
    const { subs, connect_s: connectS, failures } = await connectSubscribers(cfg.mem_conns)
    await sleep(cfg.idle_s * 1000)
    const after = rssKb()
    const connected = subs.length - failures
    out.memory = {
      connections: connected, failures, connect_s: connectS, rss_before_kb: before, rss_after_kb: after,
      kb_per_idle_connection: connected ? round((after - before) / connected, 2) : null
    }
    await closeAll(subs)
    await sleep(1000)
    out.memory.rss_after_close_kb = rssKb()
  }

  out.runs = []
  for (const n of cfg.ns) {
    log(`N=${n}: connecting`)
    const { subs, connect_s: connectS, failures } = await connectSubscribers(n)
    subscriberCount = subs.length - failures
    const run = { n, connected: subscriberCount, connect_failures: failures, connect_s: connectS }
    await sleep(500)
    log(`N=${n}: latency at ${cfg.rate}/s for ${cfg.duration} s`)
    run.latency = await latencyPhase(subscriberCount)
    log(`N=${n}: latency p50 ${run.latency.latency.p50_ms} ms p99 ${run.latency.latency.p99_ms} ms`)
    log(`N=${n}: throughput, window ${cfg.window}, ${cfg.duration} s`)
    run.throughput = await throughputPhase(subscriberCount)
    log(`N=${n}: ${run.throughput.deliveries_per_s} deliveries/s, p99 ${run.throughput.latency.p99_ms} ms`)
    run.rss_kb = rssKb()
    await closeAll(subs)
    await sleep(1000)
    out.runs.push(run)
  }
  out.problems = problems.slice(0, 20)
  out.problem_count = problems.length
  writer.destroy()
  socket.destroy()
  process.stdout.write(JSON.stringify(out) + '\n')
  process.exit(0)
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`)
  process.exit(1)
})
