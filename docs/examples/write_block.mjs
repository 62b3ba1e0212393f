// Write a Heaper block with yjs and push it over HTTP (docs/documents.md).
//
//   npm install yjs
//   HEAPER_KEY_FILE=me.key node write_block.mjs http://127.0.0.1:8470
//
// Node 18+: fetch and Ed25519 are built in. The key file holds the hex seed, as Python's
// heaper_trio.client writes it.
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import * as Y from 'yjs'

const server = process.argv[2] ?? 'http://127.0.0.1:8470'
const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))

// base58, Bitcoin alphabet: how public keys and signatures travel
const ALPHABET = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'
function base58 (bytes) {
  let n = BigInt('0x' + (Buffer.from(bytes).toString('hex') || '0'))
  let out = ''
  while (n > 0n) { out = ALPHABET[Number(n % 58n)] + out; n /= 58n }
  for (const byte of bytes) { if (byte !== 0) break; out = '1' + out }
  return out
}

function loadOrCreateKey (file) {
  if (!existsSync(file)) {
    const { privateKey } = generateKeyPairSync('ed25519')
    const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d, 'base64url')
    writeFileSync(file, seed.toString('hex') + '\n', { mode: 0o600 })
  }
  const seed = Buffer.from(readFileSync(file, 'utf8').trim(), 'hex')
  const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed])
  return createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' })
}

async function call (path, body, token) {
  const r = await fetch(server + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json', ...(token && { authorization: `Bearer ${token}` }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const answer = await r.json()
  if (!r.ok) throw new Error(`${path}: ${r.status} ${answer.error}: ${answer.message}`)
  return answer
}

async function login (privateKey) {
  const raw = Buffer.from(createPublicKey(privateKey).export({ format: 'jwk' }).x, 'base64url')
  const publicKey = base58(raw)
  const { challenge } = await call('/api/auth/create_session', { public_key: publicKey })
  const signature = base58(sign(null, Buffer.from(challenge, 'utf8'), privateKey))
  const answer = await call('/api/auth/verify_session', { public_key: publicKey, message: challenge, signature })
  if (answer.approval_required) throw new Error('account pending: an admin must approve it')
  return answer.accessToken
}

// A <paragraph>: runs are strings, [text, marks] or inline nodes (Y.XmlElement)
function paragraph (...runs) {
  const node = new Y.XmlElement('paragraph')
  const children = []
  let delta = null // consecutive text runs: one Y.XmlText, written as a delta
  for (const run of runs) {
    if (run instanceof Y.XmlElement) { children.push(run); delta = null; continue }
    const [insert, attributes] = typeof run === 'string' ? [run, undefined] : run
    if (delta === null) { delta = []; children.push(delta) }
    delta.push(attributes ? { insert, attributes } : { insert }) // a mark is a formatting attribute
  }
  node.insert(0, children.map((child) => {
    if (child instanceof Y.XmlElement) return child
    const text = new Y.XmlText()
    text.applyDelta(child) // kept until the node is in a document, then applied in order
    return text
  }))
  return node
}

function element (name, attrs) {
  const node = new Y.XmlElement(name)
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value)
  return node
}

function buildBlock (title, tagId, linkedId) {
  const now = Date.now() // times are Unix milliseconds
  const doc = new Y.Doc()
  doc.transact(() => { // one transaction: one update
    const meta = doc.getMap('meta_v0')
    meta.set('type', 'document')
    meta.set('created_at', now)

    doc.getXmlFragment('title_v0').insert(0, [paragraph(title)])

    const heading = element('heading', { level: 2 })
    heading.insert(0, [new Y.XmlText('Plan')])
    const items = new Y.XmlElement('bulletList')
    items.insert(0, ['seeds', 'soil'].map((line) => {
      const item = new Y.XmlElement('listItem')
      item.insert(0, [paragraph(line)])
      return item
    }))
    doc.getXmlFragment('content_v0').insert(0, [
      heading,
      paragraph('Ask ', element('reference', { id: tagId, label: 'Ideas', type: 'mention' }),
        ' about the ', ['garden', { bold: {} }], ', see ', element('pagelink', { blockKey: linkedId }),
        ' and ', ['the wiki', { link: { href: 'https://example.com/wiki' } }], '.'),
      items
    ])

    // tags: key = the tag block's id, value = a map with at least "type": "tag"
    doc.getMap('relations_v1').set(tagId, new Y.Map([['type', 'tag'], ['created_at', now]]))
    // a saved view on this block
    doc.getMap('apps_v0').set('board-1', new Y.Map([
      ['type', 'board'], ['sort', 'title'], ['filter', Y.Array.from(['tag', tagId])]
    ]))
  })
  return doc
}

// POST /api/sync/push for one block; merge what the server answers we lack
async function push (token, heapId, blockId, update, doc) {
  const item = { block_id: blockId, workspace_id: heapId, update: b64(update), state_vector: b64(Y.encodeStateVector(doc)) }
  const { blocks: [answer] } = await call('/api/sync/push', { blocks: [item] }, token)
  if (!['created', 'ok'].includes(answer.status)) throw new Error(`push refused: ${JSON.stringify(answer)}`)
  Y.applyUpdate(doc, unb64(answer.update))
  return answer
}

async function main () {
  const token = await login(loadOrCreateKey(process.env.HEAPER_KEY_FILE ?? 'me.key'))
  const { heap: { id: heapId } } = await call('/api/heap/add', { name: 'Garden' }, token)

  // the tag is a block too: meta_v0.type "tag", its title is the tag's name
  const [tagId, blockId, linkedId] = [randomUUID(), randomUUID(), randomUUID()]
  const tag = new Y.Doc()
  tag.transact(() => {
    tag.getMap('meta_v0').set('type', 'tag')
    tag.getXmlFragment('title_v0').insert(0, [paragraph('Ideas')])
  })
  await push(token, heapId, tagId, Y.encodeStateAsUpdate(tag), tag)

  const doc = buildBlock('Spring plan', tagId, linkedId)
  const answer = await push(token, heapId, blockId, Y.encodeStateAsUpdate(doc), doc)

  // later edits travel as the difference from what the server has
  const serverHas = unb64(answer.state_vector)
  doc.getXmlFragment('content_v0').push([paragraph('Water daily.')])
  await push(token, heapId, blockId, Y.encodeStateAsUpdate(doc, serverHas), doc)

  // to the trash and back: CRDT edits of meta_v0.deleted_at
  let before = Y.encodeStateVector(doc)
  doc.getMap('meta_v0').set('deleted_at', Date.now())
  await push(token, heapId, blockId, Y.encodeStateAsUpdate(doc, before), doc)
  const trash = await call(`/api/trash/${heapId}`, undefined, token)
  before = Y.encodeStateVector(doc)
  doc.getMap('meta_v0').delete('deleted_at')
  await push(token, heapId, blockId, Y.encodeStateAsUpdate(doc, before), doc)

  const { block, text } = await call(`/api/block/${blockId}`, {}, token)
  console.log(JSON.stringify({
    heap_id: heapId, block_id: blockId, tag_id: tagId, title: block.title, text,
    was_in_trash: trash.blocks.some((b) => b.block_id === blockId)
  }))
}

main().catch((err) => { console.error(err); process.exit(1) })
