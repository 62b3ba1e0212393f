#!/usr/bin/env node
// Live-sync driver: stock @hocuspocus/provider clients (npm `ws` as the WebSocket) against a
// server's /ws. Driven by tests/test_live_node.py:
//
//   node live_client.mjs <scenario> '<json args>'     (or the JSON args on stdin)
//
// Args: ws_url (ws://host:port/ws), token, heap_id, block_id(s), and http_url when the
// server also speaks heaper_trio's HTTP sync API (the checks against HTTP pull are skipped
// without it, so the scenarios also run against a stock @hocuspocus/server: ref_server.mjs).
// Prints one JSON object on stdout. On failure prints the error and the last frames of every
// socket on stderr and exits 1.
//
// "Stored" below means: the provider counts no unsynced changes AND, on the socket it uses now,
// every Sync step2/update frame it sent was answered by SyncStatus(true) (counted from the
// frames themselves, see lib.mjs `unacked`).
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import {
  Y, addParagraph, api, assertSame, dump, fail, now, openProvider, openSocket, pull, same,
  setMeta, sleep, stored, trace, typeText, unb64, views, waitFor
} from './lib.mjs'

const docName = (args, blockId, versioned = false) =>
  `${args.heap_id}:${blockId}${versioned ? ':v1' : ''}`

const cleanups = []
function track (...things) {
  cleanups.push(...things)
  return things[0]
}

/** Frames of a document received on any socket (what a refused provider must never get). */
const received = (name, types) =>
  trace.filter((f) => f.dir === 'in' && f.doc === name && types.includes(f.type))

async function bothStored (pairs, what) {
  return waitFor(what, () => pairs.every(([s, p]) => stored(s, p)))
}

/** The HTTP pull equals the provider's document (skipped without http_url). */
async function checkPulled (args, blockId, doc, what) {
  if (!args.http_url) return null
  const pulled = await pull(args, blockId)
  assertSame(doc, pulled, `${what}: provider vs HTTP pull`)
  return views(pulled)
}

const scenarios = {
  // Two sockets of one user on one block: edits by each reach the other; the same final
  // state (state vectors and XML); then an HTTP pull gives the same document.
  async converge (args) {
    const name = docName(args, args.block_id)
    const [sa, sb] = [track(openSocket(args.ws_url, 'A')), track(openSocket(args.ws_url, 'B'))]
    const a = track(openProvider(sa, name, args.token, { label: 'A' }))
    const b = track(openProvider(sb, name, args.token, { label: 'B' }))
    await waitFor('both providers synced', () => a.isSynced && b.isSynced)

    // A creates the block (its first update), B sees it.
    a.document.transact(() => {
      addParagraph(a.document, 'Title from A', 'title_v0')
      addParagraph(a.document, 'Hello from A.')
      setMeta(a.document, 'type', 'document')
    })
    const firstEditMs = await waitFor('A\'s first edit on B',
      () => b.document.getXmlFragment('content_v0').toString().includes('Hello from A.'))
    // Each edits: B types into A's paragraph and sets a meta key, A adds a paragraph.
    typeText(b.document, ' B was here.')
    setMeta(b.document, 'color', 'blue')
    addParagraph(a.document, 'Second paragraph by A.')
    setMeta(a.document, 'rank', 3)
    // Concurrent typing into the same text run from both sides.
    for (let i = 0; i < 10; i++) {
      typeText(a.document, ` a${i}`)
      typeText(b.document, ` b${i}`)
      await sleep(5)
    }
    const convergeMs = await waitFor('both documents equal', () => same(a.document, b.document))
    await bothStored([[sa, a], [sb, b]], 'both providers stored (no unsynced changes, all acked)')
    assertSame(a.document, b.document, 'A vs B')
    const content = a.document.getXmlFragment('content_v0').toString()
    for (const part of ['Hello from A.', 'B was here.', 'Second paragraph by A.', 'a9', 'b9']) {
      if (!content.includes(part)) fail(`content lacks ${part}: ${content}`)
    }
    const pulled = await checkPulled(args, args.block_id, a.document, 'converge')
    return {
      first_edit_ms: firstEditMs,
      converge_ms: convergeMs,
      a: views(a.document),
      b: views(b.document),
      pulled,
      authenticated: [a.events.authenticated, b.events.authenticated],
      sockets_opened: [sa, sb].map((s) => s.webSocket?.traceName)
    }
  },

  // Presence: B's and C's awareness states appear on A within a second; when B's socket is
  // destroyed (closed cleanly, without first clearing its state) and when C's TCP connection is
  // cut without a close frame, A loses their states within a second.
  async awareness (args) {
    const name = docName(args, args.block_id)
    const sa = track(openSocket(args.ws_url, 'A'))
    const sb = openSocket(args.ws_url, 'B')
    const sc = openSocket(args.ws_url, 'C')
    const a = track(openProvider(sa, name, args.token, { label: 'A' }))
    const b = openProvider(sb, name, args.token, { label: 'B' })
    const c = openProvider(sc, name, args.token, { label: 'C' })
    await waitFor('all synced', () => a.isSynced && b.isSynced && c.isSynced)
    addParagraph(a.document, 'Someone is here.')

    const state = (p, id) => p.awareness.getStates().get(id)
    const [aid, bid, cid] = [a, b, c].map((p) => p.document.clientID)
    const out = {}
    a.setAwarenessField('user', { name: 'A', color: '#f00' })
    b.setAwarenessField('user', { name: 'B', color: '#0f0' })
    c.setAwarenessField('user', { name: 'C', color: '#00f' })
    out.b_on_a_ms = await waitFor('B\'s presence on A', () => state(a, bid)?.user?.name === 'B', 1000)
    out.c_on_a_ms = await waitFor('C\'s presence on A', () => state(a, cid)?.user?.name === 'C', 1000)
    out.a_on_b_ms = await waitFor('A\'s presence on B', () => state(b, aid)?.user?.name === 'A', 1000)
    b.setAwarenessField('cursor', { anchor: 3, head: 5 })
    out.b_cursor_on_a_ms = await waitFor('B\'s cursor on A', () => state(a, bid)?.cursor?.head === 5, 1000)

    // B: its socket is destroyed (the provider itself is not, so it never sends a null state).
    sb.destroy()
    out.b_gone_ms = await waitFor('B\'s presence removed from A', () => !a.awareness.getStates().has(bid), 1000)
    if (!a.awareness.getStates().has(cid)) fail('C\'s presence went with B\'s')
    // C: the TCP connection dies without a close frame (and the provider must not reconnect).
    sc.shouldConnect = false
    sc.webSocket.terminate()
    out.c_gone_ms = await waitFor('C\'s presence removed from A', () => !a.awareness.getStates().has(cid), 1000)
    out.a_states = [...a.awareness.getStates().keys()].map((id) => id === aid ? 'A' : id)
    b.destroy()
    c.destroy()
    sc.destroy()
    return out
  },

  // B's socket goes away while A edits, B edits offline, B reconnects and catches up; A gets
  // B's offline edits; the stored document is the same.
  async reconnect (args) {
    const name = docName(args, args.block_id)
    const [sa, sb] = [track(openSocket(args.ws_url, 'A')), track(openSocket(args.ws_url, 'B'))]
    const a = track(openProvider(sa, name, args.token, { label: 'A' }))
    const b = track(openProvider(sb, name, args.token, { label: 'B' }))
    await waitFor('both synced', () => a.isSynced && b.isSynced)
    addParagraph(a.document, 'Before the break.')
    setMeta(a.document, 'type', 'document')
    await waitFor('B has A\'s first edit', () => same(a.document, b.document))
    await bothStored([[sa, a], [sb, b]], 'both stored before the break')

    sb.disconnect()
    await waitFor('B disconnected', () => sb.status === 'disconnected' && !b.isSynced, 5000)
    addParagraph(a.document, 'A wrote this while B was away.')
    setMeta(a.document, 'while_away', 'A')
    addParagraph(b.document, 'B wrote this offline.')
    setMeta(b.document, 'offline', 'B')
    typeText(b.document, ' (B offline typing)')
    await waitFor('A\'s edit stored', () => stored(sa, a))
    await sleep(300)
    if (b.document.getXmlFragment('content_v0').toString().includes('while B was away')) {
      fail('B received an edit while disconnected')
    }
    if (a.document.getXmlFragment('content_v0').toString().includes('B wrote this offline')) {
      fail('A received B\'s offline edit before B reconnected')
    }

    const t0 = now()
    sb.connect()
    await waitFor('B resynced', () => b.isSynced, 10000)
    const resyncedMs = now() - t0
    await waitFor('A and B equal after the reconnect', () => same(a.document, b.document), 10000)
    const convergedMs = now() - t0
    await bothStored([[sa, a], [sb, b]], 'both stored after the reconnect')
    assertSame(a.document, b.document, 'A vs B after the reconnect')
    const content = a.document.getXmlFragment('content_v0').toString()
    for (const part of ['Before the break.', 'while B was away', 'B wrote this offline.', 'B offline typing']) {
      if (!content.includes(part)) fail(`content lacks ${part}: ${content}`)
    }
    // And live editing goes on over the new connection.
    typeText(b.document, ' Back online.')
    await waitFor('B\'s edit after the reconnect on A', () => same(a.document, b.document))
    await bothStored([[sa, a], [sb, b]], 'both stored at the end')
    const pulled = await checkPulled(args, args.block_id, a.document, 'reconnect')
    return {
      resynced_ms: resyncedMs,
      converged_ms: convergedMs,
      a: views(a.document),
      b: views(b.document),
      pulled,
      b_closes: sb.closes,
      b_sockets: [...new Set(trace.filter((f) => f.sock.startsWith('B#')).map((f) => f.sock))]
    }
  },

  // On one socket: a garbage token and another user's valid token on a heap that is not
  // theirs are refused (authenticationFailed, no document content ever arrives); the socket
  // stays open, and on it the owner's token opens another block of that heap, and the other
  // user's token a heap of their own. Finally (reported, not asserted: the contract does not
  // say) whether the refused document name opens on that socket when retried with a good token.
  async auth (args) {
    const [name, otherName] = [docName(args, args.block_id), docName(args, args.block_id_2)]
    // The owner writes two blocks first, on a socket of its own.
    const so = track(openSocket(args.ws_url, 'owner'))
    const owner = track(openProvider(so, name, args.token, { label: 'owner' }))
    const owner2 = track(openProvider(so, otherName, args.token, { label: 'owner2' }))
    await waitFor('owner synced', () => owner.isSynced && owner2.isSynced)
    addParagraph(owner.document, 'Secret of the owner.')
    setMeta(owner.document, 'type', 'document')
    addParagraph(owner2.document, 'Another note of the owner.')
    await waitFor('owner stored', () => stored(so, owner) && stored(so, owner2))

    const s = track(openSocket(args.ws_url, 'S'))
    const out = {}
    const refused = async (token, label) => {
      const p = openProvider(s, name, token, { label })
      await waitFor(`${label}: authenticationFailed`, () => p.events.authenticationFailed.length > 0, 5000)
      await sleep(300) // anything that would still arrive for it
      const leaked = received(name, ['Sync', 'SyncReply', 'Awareness'])
        .filter((f) => f.sock === s.webSocket.traceName)
      if (leaked.length) fail(`${label}: refused, yet got ${dump(leaked)}`)
      if (p.document.getXmlFragment('content_v0').length !== 0) fail(`${label}: got content`)
      if (p.isSynced || p.events.authenticated.length) fail(`${label}: synced/authenticated anyway`)
      out[label] = { reasons: p.events.authenticationFailed, socket_status: s.status }
      p.destroy() // detaches: a null awareness state and Close for the document name
      return p
    }
    await refused('garbage.token.value', 'garbage')
    await refused(args.eve_token, 'eve_on_admins_heap')
    if (s.status !== 'connected') fail(`socket S is ${s.status} after the refusals`)

    // The same socket, another block of that heap, the owner's token: opens, has the content.
    const ok = openProvider(s, otherName, args.token, { label: 'owner_other' })
    await waitFor('owner_other synced', () => ok.isSynced, 5000)
    await waitFor('owner_other has the content', () => same(ok.document, owner2.document), 5000)
    out.owner_other = { authenticated: ok.events.authenticated, content: views(ok.document).content }
    // Eve on the same socket, on a heap of her own.
    const evesName = docName({ heap_id: args.eve_heap_id }, args.eve_block_id)
    const eve = openProvider(s, evesName, args.eve_token, { label: 'eve_own' })
    await waitFor('eve_own synced', () => eve.isSynced, 5000)
    addParagraph(eve.document, 'Eve\'s own note.')
    await waitFor('eve_own stored', () => stored(s, eve))
    out.eve_own = { authenticated: eve.events.authenticated }
    // Live edits still flow to the socket that saw two refusals.
    typeText(owner2.document, ' More.')
    await waitFor('owner\'s edit on owner_other', () => same(ok.document, owner2.document))
    out.socket_instances = [...new Set(trace.filter((f) => f.sock.startsWith('S#')).map((f) => f.sock))]
    out.socket_closes = s.closes
    if (out.socket_instances.length !== 1 || s.closes.length) fail(`socket S reconnected: ${dump(out)}`)

    // Informational: the refused name again, now with the owner's token, on the same socket.
    const retry = openProvider(s, name, args.token, { label: 'retry' })
    const t0 = now()
    while (now() - t0 < 3000 && !(retry.isSynced && same(retry.document, owner.document))) await sleep(10)
    out.same_name_retry = {
      synced: retry.isSynced && same(retry.document, owner.document),
      authenticated: retry.events.authenticated,
      failed: retry.events.authenticationFailed
    }
    for (const p of [ok, eve, retry]) p.destroy()
    return out
  },

  // A pycrdt update pushed over HTTP while a provider is live reaches it; the provider's own
  // edits are stored (the test then finds the block in /api/sync/delta and its projection).
  async http_push (args) {
    const name = docName(args, args.block_id)
    const s = track(openSocket(args.ws_url, 'A'))
    const a = track(openProvider(s, name, args.token, { label: 'A' }))
    await waitFor('synced', () => a.isSynced)
    a.document.transact(() => {
      addParagraph(a.document, 'Live title', 'title_v0')
      addParagraph(a.document, 'Written live.')
      setMeta(a.document, 'type', 'document')
    })
    await waitFor('live edit stored', () => stored(s, a))

    const t0 = now()
    const pushed = await api(args, 'POST', '/api/sync/push', { blocks: [args.push_item] })
    const pushMs = now() - t0
    const [answer] = pushed.blocks
    if (!['ok', 'created'].includes(answer.status)) fail(`push: ${dump(answer)}`)
    await waitFor('the HTTP push on the provider', () =>
      a.document.getXmlFragment('content_v0').toString().includes(args.expect_text) &&
      a.document.getMap('meta_v0').get('via') === 'http', 5000)
    const arrivedMs = now() - t0
    // The provider applied exactly what was pushed: the pycrdt doc's state is contained.
    const probe = new Y.Doc()
    Y.applyUpdate(probe, unb64(args.push_item.update))
    const sv = Y.decodeStateVector(Y.encodeStateVector(a.document))
    for (const [client, clock] of Y.decodeStateVector(Y.encodeStateVector(probe))) {
      if ((sv.get(client) ?? 0) < clock) fail(`provider lacks client ${client} up to ${clock}`)
    }

    typeText(a.document, ' Edited live after the push.')
    await waitFor('second live edit stored', () => stored(s, a))
    const pulled = await checkPulled(args, args.block_id, a.document, 'http_push')
    return { push_ms: pushMs, arrived_ms: arrivedMs, doc: views(a.document), pulled }
  },

  // Several blocks over one socket per side: A and B each open every block on a single
  // socket, edit all of them, and every block converges and is stored.
  async many_docs (args) {
    const ids = args.block_ids
    const names = ids.map((id, i) => docName(args, id, i % 2 === 0)) // `:v1` on every other
    const [sa, sb] = [track(openSocket(args.ws_url, 'A')), track(openSocket(args.ws_url, 'B'))]
    const as = names.map((n, i) => track(openProvider(sa, n, args.token, { label: `A${i}` })))
    const bs = names.map((n, i) => track(openProvider(sb, n, args.token, { label: `B${i}` })))
    await waitFor('all providers synced', () => [...as, ...bs].every((p) => p.isSynced))
    as.forEach((p, i) => {
      addParagraph(p.document, `Block ${i}`, 'title_v0')
      addParagraph(p.document, `Body ${i} by A.`)
    })
    bs.forEach((p, i) => setMeta(p.document, 'index', i))
    const convergeMs = await waitFor('every block equal on A and B',
      () => as.every((p, i) => same(p.document, bs[i].document)))
    await waitFor('every provider stored', () =>
      as.every((p) => stored(sa, p)) && bs.every((p) => stored(sb, p)))
    const docs = []
    for (let i = 0; i < ids.length; i++) {
      const d = as[i].document
      if (d.getMap('meta_v0').get('index') !== i) fail(`block ${i}: B's meta missing`)
      if (!d.getXmlFragment('content_v0').toString().includes(`Body ${i} by A.`)) fail(`block ${i}: A's text missing`)
      docs.push({ name: names[i], ...views(d), pulled: await checkPulled(args, ids[i], d, `block ${i}`) })
    }
    // Each side used exactly one TCP connection.
    const sockets = [...new Set(trace.filter((f) => f.type === 'open').map((f) => f.sock))]
    return { converge_ms: convergeMs, docs, sockets }
  },

  // Many large stored documents opened at once by providers sharing one socket: the server's
  // replies (~1 MB each, split in pieces) queue for one outbox; every provider must sync
  // (issue 9, item 10: 11 of 20 synced, then the socket idled for ever). Reports, per
  // document, the SHA-256 and length of its content as the provider holds it.
  async large_docs (args) {
    const names = args.block_ids.map((id) => docName(args, id))
    const s = track(openSocket(args.ws_url, 'L'))
    const t0 = now()
    const ps = names.map((n, i) => track(openProvider(s, n, args.token, { label: `L${i}` })))
    const syncMs = await waitFor('every large document synced',
      () => ps.every((p) => p.isSynced), args.timeout_ms ?? 20000)
    const docs = ps.map((p) => {
      const content = p.document.getXmlFragment('content_v0').toString()
      return {
        name: p.configuration.name,
        content_chars: content.length,
        content_sha256: createHash('sha256').update(content).digest('hex'),
        meta: p.document.getMap('meta_v0').toJSON()
      }
    })
    const sockets = [...new Set(trace.filter((f) => f.type === 'open').map((f) => f.sock))]
    return { sync_ms: syncMs, total_ms: now() - t0, docs, sockets, closes: s.closes }
  },

  // Not a test: the frames of one provider connecting, editing once and leaving (for notes).
  async probe (args) {
    const name = docName(args, args.block_id)
    const s = openSocket(args.ws_url, 'P')
    const p = openProvider(s, name, args.token, { label: 'P' })
    await waitFor('synced', () => p.isSynced)
    addParagraph(p.document, 'probe')
    await waitFor('stored', () => stored(s, p))
    await sleep(args.idle_ms ?? 200)
    p.destroy()
    s.destroy()
    await sleep(100)
    return { trace }
  }
}

async function main () {
  const [name, json] = process.argv.slice(2)
  const scenario = scenarios[name] ?? fail(`usage: live_client.mjs <${Object.keys(scenarios).join('|')}> [json]`)
  const args = JSON.parse(json ?? readFileSync(0, 'utf8'))
  let result
  try {
    result = await scenario(args)
  } finally {
    for (const thing of cleanups.reverse()) {
      try { thing.destroy() } catch {}
    }
  }
  process.stdout.write(dump(result) + '\n')
  process.exit(0) // stray timers of the providers must not keep the process alive
}

main().catch((err) => {
  const frames = trace.slice(-150).map((f) => JSON.stringify(f)).join('\n')
  process.stderr.write(`${err.stack ?? err}\n-- last frames (t ms, socket, direction) --\n${frames}\n`)
  process.exit(1)
})
