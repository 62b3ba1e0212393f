#!/usr/bin/env node
// Interop client: the reference Yjs implementation talking to heaper_trio's HTTP sync.
// Driven by tests/test_interop.py:
//
//   node yjs_client.mjs <build|edit|read> '<json args>'     (or the JSON args on stdin)
//
// Common args: url, token. Prints one JSON object on stdout; on failure prints the error on
// stderr and exits 1. Only npm `yjs`; HTTP is Node's global fetch, base64 is Buffer.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'

const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))

function fail (message) {
  throw new Error(message)
}

async function api (args, path, body) {
  const r = await fetch(args.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${args.token}` },
    body: JSON.stringify(body)
  })
  const answer = await r.text()
  if (!r.ok) fail(`${path} answered ${r.status}: ${answer}`)
  return JSON.parse(answer)
}

async function push (args, blockId, doc, sinceSv) {
  const update = sinceSv ? Y.encodeStateAsUpdate(doc, sinceSv) : Y.encodeStateAsUpdate(doc)
  const item = {
    block_id: blockId,
    workspace_id: args.heap_id,
    update: b64(update),
    state_vector: b64(Y.encodeStateVector(doc))
  }
  const answer = await api(args, '/api/sync/push', { blocks: [item] })
  const [result] = answer.blocks
  if (!['ok', 'created'].includes(result.status)) fail(`push: ${JSON.stringify(result)}`)
  return result
}

// Pull a block into a fresh Y.Doc (from an empty state vector).
async function pullFresh (args, blockId) {
  const answer = await api(args, '/api/sync/pull', {
    blocks: [{ block_id: blockId, state_vector: b64(Y.encodeStateVector(new Y.Doc())) }]
  })
  const [result] = answer.blocks
  if (result.status !== 'ok') fail(`pull: ${JSON.stringify(result)}`)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, unb64(result.update))
  return doc
}

// The XML as a structure both sides can build: attrs as objects, text as delta runs.
function tree (node) {
  if (node instanceof Y.XmlText) {
    return { text: node.toDelta().map((op) => [op.insert, op.attributes ?? {}]) }
  }
  const children = node.toArray().map(tree)
  if (node instanceof Y.XmlElement) return { tag: node.nodeName, attrs: node.getAttributes(), children }
  return { children }
}

function views (doc) {
  const title = doc.getXmlFragment('title_v0')
  const content = doc.getXmlFragment('content_v0')
  return {
    title: title.toString(),
    content: content.toString(),
    title_tree: tree(title),
    content_tree: tree(content),
    relations: doc.getMap('relations_v1').toJSON(),
    files: doc.getMap('files_v0').toJSON(),
    apps: doc.getMap('apps_v0').toJSON(),
    meta: doc.getMap('meta_v0').toJSON(),
    state_vector: Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(doc)))
  }
}

// JSON with what JSON cannot hold made visible (a BigInt would otherwise throw).
const dump = (value) => JSON.stringify(value, (_k, v) =>
  typeof v === 'bigint' ? { $bigint: v.toString() } : v instanceof Uint8Array ? { $bytes: b64(v) } : v)

function assertSameDocs (a, b, what) {
  const [va, vb] = [dump(views(a)), dump(views(b))]
  if (va !== vb) fail(`${what}: documents differ\n${va}\n${vb}`)
  // Nothing of either is missing from the other (structs and deletions).
  for (const [x, y] of [[a, b], [b, a]]) {
    const probe = new Y.Doc()
    Y.applyUpdate(probe, Y.encodeStateAsUpdate(y))
    Y.applyUpdate(probe, Y.encodeStateAsUpdate(x, Y.encodeStateVector(y)))
    if (dump(views(probe)) !== vb) fail(`${what}: one document holds more than the other`)
  }
}

function paragraph (...children) {
  const p = new Y.XmlElement('paragraph')
  p.insert(0, children)
  return p
}

// One run of text as y-prosemirror writes it: marks are formatting attributes.
function text (...runs) {
  const t = new Y.XmlText()
  t.applyDelta(runs.map((r) => typeof r === 'string' ? { insert: r } : { insert: r[0], attributes: r[1] }))
  return t
}

function element (name, attrs) {
  const el = new Y.XmlElement(name)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v)
  return el
}

// A block laid out as the Heaper app writes it (see CONTRACT.md "Block document schema").
function buildDoc ({ title, tag_id: tagId, mention_id: mentionId, link_id: linkId }) {
  const doc = new Y.Doc()
  const bytes = Buffer.from('hello interop\n')
  const hash = createHash('sha256').update(bytes).digest('hex')
  doc.transact(() => {
    doc.getXmlFragment('title_v0').insert(0, [paragraph(text(title))])
    doc.getXmlFragment('content_v0').insert(0, [
      paragraph(text('First paragraph mentions '),
        element('reference', { id: mentionId, label: 'Ref Label', type: 'mention' }),
        text(' and a ', ['bold', { strong: {} }], ' word.')),
      paragraph(text('Second paragraph links to '), element('pagelink', { blockKey: linkId }),
        text(' — fertig ✓'))
    ])
    doc.getMap('relations_v1').set(tagId, new Y.Map([['type', 'tag'], ['created_at', 1700000000000]]))
    doc.getMap('files_v0').set(`${hash}:${bytes.length}`, new Y.Map([
      ['hash', hash], ['name', 'hello.txt'], ['mime_type', 'text/plain'],
      ['file_size', bytes.length], ['width', 0], ['duration', 1.5]
    ]))
    doc.getMap('apps_v0').set('app-1', new Y.Map([
      ['type', 'table'], ['sort', 'title'], ['filter', Y.Array.from(['tag', tagId])]
    ]))
    const meta = doc.getMap('meta_v0')
    meta.set('type', 'document')
    meta.set('created_at', 1700000000000)
  })
  return doc
}

const commands = {
  // Build a block, push it whole, pull it into a fresh doc: the two must be equal.
  async build (args) {
    const blockId = args.block_id
    const doc = buildDoc(args)
    const pushed = await push(args, blockId, doc)
    const before = dump(views(doc))
    Y.applyUpdate(doc, unb64(pushed.update)) // what we lack: nothing
    if (dump(views(doc)) !== before) fail('push answered with content the client lacked')
    const fresh = await pullFresh(args, blockId)
    assertSameDocs(doc, fresh, 'pushed vs pulled')
    const sameBytes = b64(Y.encodeStateAsUpdate(doc)) === b64(Y.encodeStateAsUpdate(fresh))
    return { block_id: blockId, status: pushed.status, same_update_bytes: sameBytes, ...views(fresh) }
  },

  // Edit a copy (given as `from_state`, a possibly stale full state, or pulled now), push only
  // the diff since that copy, apply what the server answers we lack.
  async edit (args) {
    const doc = new Y.Doc()
    if (args.from_state) Y.applyUpdate(doc, unb64(args.from_state))
    else Y.applyUpdate(doc, Y.encodeStateAsUpdate(await pullFresh(args, args.block_id)))
    const known = Y.encodeStateVector(doc)
    doc.transact(() => {
      const first = doc.getXmlFragment('content_v0').get(0)
      const run = first.toArray().find((n) => n instanceof Y.XmlText)
      run.delete(0, 1) // the first character of the first paragraph
      const last = first.get(first.length - 1)
      if (last instanceof Y.XmlText) last.insert(last.length, args.append)
      else first.insert(first.length, [text(args.append)])
      doc.getMap('meta_v0').set(args.meta_key, args.meta_value)
    })
    const pushed = await push(args, args.block_id, doc, known)
    Y.applyUpdate(doc, unb64(pushed.update))
    return { status: pushed.status, ...views(doc) }
  },

  // Pull a block into a fresh Y.Doc and show it.
  async read (args) {
    return views(await pullFresh(args, args.block_id))
  }
}

async function main () {
  const [name, json] = process.argv.slice(2)
  const command = commands[name] ?? fail(`usage: yjs_client.mjs <${Object.keys(commands).join('|')}> [json]`)
  const args = JSON.parse(json ?? readFileSync(0, 'utf8'))
  process.stdout.write(dump(await command(args)) + '\n')
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`)
  process.exit(1)
})
