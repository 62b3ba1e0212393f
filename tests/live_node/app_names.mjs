#!/usr/bin/env node
// The Heaper app's /ws document names with the stock @hocuspocus/provider: a provider on
// `block/<block_id>?workspaceId=<heap_id>` and one on the contract's `<heap_id>:<block_id>`
// edit one block document; both converge and are stored; a third opens
// `...&syncVersion=1` (the block's version) and syncs the same content.
// Driven by tests/test_app_ws_names.py:  node app_names.mjs '<json args>'  (or JSON on stdin).
// Args: ws_url, http_url, token, heap_id, block_id. Prints one JSON object.
import { readFileSync } from 'node:fs'
import {
  addParagraph, assertSame, dump, fail, openProvider, openSocket, pull, same, setMeta, stored,
  trace, typeText, views, waitFor
} from './lib.mjs'

async function run (args, cleanups) {
  const track = (thing) => { cleanups.push(thing); return thing }
  const appName = `block/${args.block_id}?workspaceId=${args.heap_id}`
  const contractName = `${args.heap_id}:${args.block_id}`
  const [sa, sb] = [track(openSocket(args.ws_url, 'app')), track(openSocket(args.ws_url, 'contract'))]
  const a = track(openProvider(sa, appName, args.token, { label: 'app' }))
  const b = track(openProvider(sb, contractName, args.token, { label: 'contract' }))
  await waitFor('both providers synced', () => a.isSynced && b.isSynced)
  a.document.transact(() => {
    addParagraph(a.document, 'Written by the app', 'title_v0')
    addParagraph(a.document, 'Body from the app name.')
    setMeta(a.document, 'type', 'document')
  })
  await waitFor('the app\'s edit on the contract name',
    () => b.document.getXmlFragment('content_v0').toString().includes('Body from the app name.'))
  typeText(b.document, ' And from the contract name.')
  setMeta(b.document, 'via', 'contract')
  await waitFor('both documents equal', () => same(a.document, b.document))
  await waitFor('both stored', () => stored(sa, a) && stored(sb, b))
  assertSame(a.document, b.document, 'app vs contract name')
  const pulled = await pull(args, args.block_id)
  assertSame(a.document, pulled, 'provider vs HTTP pull')

  const sc = track(openSocket(args.ws_url, 'versioned'))
  const c = track(openProvider(sc, `${appName}&syncVersion=1`, args.token, { label: 'versioned' }))
  await waitFor('the versioned app name synced', () => c.isSynced)
  await waitFor('its content', () => same(a.document, c.document))
  return {
    app: views(a.document),
    contract: views(b.document),
    versioned: views(c.document),
    authenticated: [a.events.authenticated, b.events.authenticated, c.events.authenticated],
    stateless: c.events.stateless,
    failed: [a, b, c].flatMap((p) => p.events.authenticationFailed)
  }
}

async function main () {
  const args = JSON.parse(process.argv[2] ?? readFileSync(0, 'utf8'))
  const cleanups = []
  let result
  try {
    result = await run(args, cleanups)
  } finally {
    for (const thing of cleanups.reverse()) {
      try { thing.destroy() } catch {}
    }
  }
  process.stdout.write(dump(result) + '\n')
  process.exit(0)
}

main().catch((err) => {
  const frames = trace.slice(-100).map((f) => JSON.stringify(f)).join('\n')
  process.stderr.write(`${err.stack ?? err}\n-- last frames --\n${frames}\n`)
  if (!err) fail('unknown error')
  process.exit(1)
})
