"""Full-text search answers the same on both engines (issue 10, item 6).

SQLite's FTS5 (unicode61) is the reference: a word is a run of letters and digits, case and
combining diacritics do not matter, a search word matches as a prefix, a term joined by ``_``
is the phrase of its parts. PostgreSQL's 'simple' parser used to index ``word-12e2e901`` as
``word-12e2e901``, ``word`` and ``12e2e901`` while it parsed the query ``12e2e901`` as the
float ``12e2`` followed by ``e901``, so about one random hex word in twenty was never found;
and in a C-locale database it neither lower-cased nor split non-ASCII text.
"""

from __future__ import annotations

import hashlib
from typing import Any

import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .test_harden_file_grants import raw_sql
from .test_query import ids
from .test_sync import ClientBlock, new_heap, push

# Hex words that the 'simple' parser reads as floats, versions or hyphenated parts.
TOKENS = ["12e2e901", "1e5", "0e0", "9e99x", "e901"] + [
    hashlib.sha256(str(i).encode()).hexdigest()[:8] for i in range(120)
]


async def _heap(admin: HeaperClient, blocks: dict[str, tuple[str, str]]) -> tuple[Any, Any]:
    heap = await new_heap(admin)
    made = {name: ClientBlock() for name in blocks}
    for name, (title, body) in blocks.items():
        made[name].write(title, body)
    await push(admin, *(b.push_item(heap["id"]) for b in made.values()))
    return heap, {b.id: name for name, b in made.items()}


async def test_hyphenated_hex_words(admin: HeaperClient) -> None:
    """Every ``word-<hex>`` is found by its hex part, by the whole hyphenated word and by a
    prefix of the hex part, and only in its own block."""
    chunks = [TOKENS[i : i + 25] for i in range(0, len(TOKENS), 25)]
    blocks = {
        f"b{n}": (f"Chunk {n}", " ".join(f"word-{t}" for t in chunk))
        for n, chunk in enumerate(chunks)
    }
    heap, name = await _heap(admin, blocks)
    missed = []
    for chunk in chunks:
        for t in chunk:
            for q, part in ((t, t), (f"word-{t}", t), (t[:5], t[:5]), (t.upper(), t)):
                found = {name.get(i) for i in await ids(admin, heap, query=q)}
                owners = {
                    f"b{m}" for m, c in enumerate(chunks) if any(x.startswith(part) for x in c)
                }
                if found != owners:
                    missed.append((q, sorted(found - {None}), sorted(owners)))
    assert missed == []


async def test_words_digits_unicode_prefixes(admin: HeaperClient) -> None:
    heap, name = await _heap(
        admin,
        {
            "ver": ("Release 1.2.3", "build v2 shipped 2026-12-02 with 42 fixes"),
            "names": ("Émile's CAFÉ", "grüße from Zoë; Привет мир; 東京タワー"),
            "dash": ("x—y and well-known", "foo_bar then bar foo"),
            "plain": ("Plan", "planning notes"),
        },
    )

    async def search(q: str) -> set[str]:
        return {name[i] for i in await ids(admin, heap, query=q) if i in name}

    # hyphens, dots and dashes split words; the parts are words of their own
    assert await search("well") == {"dash"}
    assert await search("known") == {"dash"}
    assert await search("well-known") == {"dash"}
    assert await search("y") == {"dash"}
    # digits: numbers are words, dotted versions and dates are their parts
    assert await search("1.2.3") == {"ver"}
    assert await search("3") == {"ver"}
    assert await search("42") == {"ver"}
    assert await search("2026") == {"ver"}
    assert await search("v2") == {"ver"}
    assert await search("v3") == set()
    # case and diacritics do not matter; non-Latin scripts fold case too
    assert await search("emile") == {"names"}
    assert await search("ÉMILE café CAFE") == {"names"}
    assert await search("zoe") == {"names"}
    assert await search("grusse") == set()  # ß is a letter of its own
    assert await search("GRÜSSE") == set()
    assert await search("grüße") == {"names"}
    assert await search("привет МИР") == {"names"}
    assert await search("東京") == {"names"}  # a prefix of the word 東京タワー
    assert await search("タワー") == set()  # not a prefix: no word starts there
    # prefixes match at the start of a word only
    assert await search("plan") == {"plain"}
    assert await search("lann") == set()
    assert await search("s") == {"ver", "names"}  # shipped, the s of Émile's
    # a term joined by "_" is the phrase of its parts, the last a prefix
    assert await search("foo_bar") == {"dash"}
    assert await search("foo_ba") == {"dash"}
    assert await search("bar_foo") == {"dash"}
    assert await search("bar_then") == {"dash"}  # foo_bar then
    assert await search("then_foo") == set()
    assert await search("then_bar_f") == {"dash"}
    # quotes, operators and tsquery syntax are only text
    assert await search("'foo' & !bar:*") == {"dash"}
    assert await search("foo | zzz") == set()


async def test_search_results_keep_the_sort(admin: HeaperClient) -> None:
    """No relevance ranking on either engine: found blocks come in the requested sort, so both
    engines list them in the same order."""
    heap, name = await _heap(
        admin,
        {
            "c": ("charlie plan", "plan plan plan"),
            "a": ("alpha", "a planning day"),
            "b": ("Bravo", "planned"),
            "z": ("zulu", "nothing here"),
        },
    )
    titles = [name[i] for i in await ids(admin, heap, query="plan", sort="title")]
    assert titles == ["b", "a", "c"]  # byte order: "Bravo" before "alpha"
    desc = [name[i] for i in await ids(admin, heap, query="plan", sort="title", order="desc")]
    assert desc == ["c", "a", "b"]
    page = await admin.post(
        "/api/heap", json={"heap_id": heap["id"], "query": "plan", "sort": "title", "limit": 2}
    )
    body = page.json()
    assert [name[b["block_id"]] for b in body["blocks"]] == ["b", "a"]
    rest = await ids(admin, heap, query="plan", sort="title", cursor=body["next_cursor"])
    assert [name[i] for i in rest] == ["c"]


async def test_the_upgrade_reindexes_existing_blocks(
    admin: HeaperClient, server: RunningServer, start_server: Any
) -> None:
    """A database from before 0017 (no search rows per line): the migration indexes the blocks
    already stored, once, so their words are found after the upgrade, split as 0008 splits
    them on PostgreSQL (hex words, hyphens, diacritics)."""
    heap, name = await _heap(admin, {"old": ("Old note", "word-12e2e901 by Émile")})
    storage = server.services.storage
    if storage.engine == "sqlite":
        drop = ["DROP TABLE block_lines_fts", "DROP TABLE block_lines_todo"]
        drop.append("DROP TRIGGER blocks_lines_delete")
    else:
        drop = []
    await raw_sql(
        storage,
        *drop,
        "DROP TABLE block_lines",
        "DELETE FROM schema_migrations WHERE version = 17",
    )
    server.services.shutdown.set()
    await trio.sleep(0.2)

    again = await start_server()  # same database: 0017 runs for real
    assert await again.services.storage.schema_version() >= 17
    async with HeaperClient(again.url, admin.key) as a:
        await a.login()
        for q in ("12e2e901", "word-12e2e9", "emile", "old"):
            assert [name[i] for i in await ids(a, heap, query=q)] == ["old"], q
