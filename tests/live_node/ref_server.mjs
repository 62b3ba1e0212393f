#!/usr/bin/env node
// A stock @hocuspocus/server (in memory: no persistence, no extensions), the reference the
// drivers were developed against and the other server of scripts/bench_ws.py.
//
//   node ref_server.mjs [--port P] [--host H] [--compression]
//
// --compression: accept permessage-deflate when a client offers it (`ws`'s server option
// perMessageDeflate; off by default, as in a stock Hocuspocus).
// Prints `listening <port>` on stdout once it accepts connections; stops on SIGTERM/SIGINT.
// By default every token is accepted. With REF_AUTH='{"<token>": ["<heap_id>", ...]}' in the
// environment a document `<heap_id>:...` opens only with a token listed for that heap
// (anything else is PermissionDenied), which mimics heaper_trio for the auth scenario.
import { Server } from '@hocuspocus/server'

const argv = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : fallback
}
const auth = process.env.REF_AUTH ? JSON.parse(process.env.REF_AUTH) : null

const server = new Server({
  port: Number(opt('--port', 0)),
  address: opt('--host', '127.0.0.1'),
  quiet: true,
  websocketOptions: { perMessageDeflate: argv.includes('--compression') },
  async onAuthenticate ({ token, documentName }) {
    if (!auth) return
    const heap = documentName.split(':')[0]
    if (!(auth[token] ?? []).includes(heap)) throw new Error('not your heap')
  }
})

await server.listen()
process.stdout.write(`listening ${server.address.port}\n`)

const stop = async () => {
  await server.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
