"""Export a heap as a folder of Markdown files and import such a folder (or an Obsidian-style
vault) into a heap: ``python -m heaper_trio export|import`` (docs/self-hosting.md, "Export and
import").

Both talk to a running server over HTTP as the heap's owner, like any other client: an export
reads what the server answers (so it works while the server runs, on either engine, and can
change nothing), an import pushes documents and uploads files through the very routes the app
uses (so projections, search, file grants, thumbnails and live subscribers all follow, and a
running server is never written behind its back). That is why this lives in the client
package: it needs no layer of the server.

The conversion goes through a small tree (:mod:`.tree`): Yjs XML -> tree -> Markdown on
export, Markdown -> tree -> Yjs XML on import, so both directions share one model of the
document and can be tested without a server.
"""
