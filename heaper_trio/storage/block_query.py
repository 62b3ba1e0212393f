"""SQL for block queries, written once for both engines.

The engines differ only in placeholders (``?`` / ``$n``), in full-text search (FTS5 / a
tsvector column) and in how titles sort (byte order on both: SQLite's default, ``COLLATE "C"``
on PostgreSQL). Nested tags are a recursive CTE over tag relations that stops at trashed blocks:
while a tag is in the trash its relations are hidden, so its children no longer inherit it.
Tag closure and "unlinked" follow only edges between blocks of the queried heap: block ids are
guessable, and another user's blocks that tag or share an id must not change what this heap's
query answers (nor reveal that the id exists).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from heaper_trio.records import BlockQuery

SORT_COLUMNS = {"created": "b.created_at", "updated": "b.updated_at", "title": "b.title"}


@dataclass(frozen=True)
class Dialect:
    placeholder: Callable[[int], str]  # 1-based index -> "?" or "$1"
    full_text: Callable[[str], str]  # placeholder -> condition on ``b``
    full_text_param: Callable[[tuple[str, ...]], str]
    title_collation: str = ""
    # ORDER BY terms put before the sort column: PostgreSQL sorts titles by the prefix its index
    # holds (migration 0020) first, the same order as the whole title in byte order.
    title_order_prefix: str = ""
    # A block with a body: big texts are kept in pieces, out of ``b.text`` (0022).
    has_text: str = "(b.text <> '' OR b.text_parts <> 0)"


SQLITE = Dialect(
    placeholder=lambda i: f"?{i}",  # numbered: parameters bind by number, not by position
    full_text=lambda ph: (
        "b.n IN (SELECT l.block_n FROM block_lines_fts f JOIN block_lines l ON l.n = f.rowid "
        f"WHERE block_lines_fts MATCH {ph})"
    ),
    full_text_param=lambda terms: " ".join(f'"{t}"*' for t in terms),
)
# A word as SQLite's unicode61 sees it: a run of letters and digits (``_`` splits words too).
_ALNUM = re.compile(r"[^\W_]+")
_DIACRITICS = re.compile("[\u0300-\u036f]")
# Index words are letters and digits only, so this lexeme is never found (like FTS5's "_"*).
_NO_WORD = "'_'"


def search_words(term: str) -> list[str]:
    """The words of a search term, normalised as migration 0008 (``heaper_search_vector``)
    normalises indexed text on PostgreSQL: lower-cased, combining diacritics removed, split at
    anything that is not a letter or digit. Both sides must agree, or a word is never found."""
    folded = _DIACRITICS.sub("", unicodedata.normalize("NFD", term.lower()))
    return _ALNUM.findall(unicodedata.normalize("NFC", folded))


def _postgres_term(term: str) -> str:
    """One term as a tsquery: its words in a row, the last a prefix, like FTS5's ``"a_b"*``
    (the phrase ``a`` then ``b*``). The query is cast, not parsed by ``to_tsquery``: the parser
    would split words such as ``12e2e901`` differently from how they were indexed."""
    lexemes = ["'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in search_words(term)]
    if not lexemes:
        return _NO_WORD
    lexemes[-1] += ":*"
    return "(" + " <-> ".join(lexemes) + ")"


POSTGRES = Dialect(
    placeholder=lambda i: f"${i}",
    full_text=lambda ph: (
        f"b.id IN (SELECT l.block_id FROM block_lines l WHERE l.search @@ CAST({ph} AS tsquery))"
    ),
    full_text_param=lambda terms: " & ".join(_postgres_term(t) for t in terms),
    title_collation=' COLLATE "C"',
    title_order_prefix='left(b.title, 256) COLLATE "C"',
)


class _Params:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self.dialect.placeholder(len(self.values))


def _where(d: Dialect, p: _Params, heap_id: str, q: BlockQuery) -> tuple[str, str]:
    """(WITH clause or "", WHERE conditions) for the filters of ``q``."""
    cte = ""
    conds = [
        f"b.heap_id = {p(heap_id)}",
        "b.deleted_at IS NOT NULL" if q.trash else "b.deleted_at IS NULL",
    ]
    if q.types:
        conds.append(f"b.type IN ({', '.join(p(t) for t in q.types)})")
    if q.tag is not None:
        heap = p(heap_id)
        cte = (
            "WITH RECURSIVE tagged(id) AS ("
            f"SELECT r.block_id FROM block_relations r WHERE r.kind = 'tag' "
            f"AND r.target_id = {p(q.tag)} AND r.heap_id = {heap} "
            "UNION SELECT r.block_id FROM block_relations r JOIN tagged t ON r.target_id = t.id "
            "JOIN blocks c ON c.id = t.id WHERE r.kind = 'tag' AND c.deleted_at IS NULL "
            f"AND r.heap_id = {heap} AND c.heap_id = {heap}) "
        )
        conds.append("b.id IN (SELECT id FROM tagged)")
    # Each term on its own: the search rows are lines (migration 0017), and the terms of one
    # query may be found on different lines of a block, a term's words only on one line.
    conds.extend(d.full_text(p(d.full_text_param((term,)))) for term in q.terms)
    if q.unlinked:
        conds.append(
            "NOT EXISTS (SELECT 1 FROM block_relations r JOIN blocks t "
            "ON t.id = r.target_id AND t.deleted_at IS NULL AND t.heap_id = b.heap_id "
            "WHERE r.block_id = b.id AND r.kind = 'tag')"
        )
        conds.append("b.id NOT IN (SELECT root_block_id FROM heaps WHERE id = b.heap_id)")
    if q.has_content is not None:
        conds.append(d.has_text if q.has_content else f"NOT ({d.has_text})")
    return cte, " AND ".join(conds)


def select_sql(
    d: Dialect, heap_id: str, q: BlockQuery, columns: str, limit: int
) -> tuple[str, list[Any]]:
    p = _Params(d)
    cte, where = _where(d, p, heap_id, q)
    col = SORT_COLUMNS[q.sort] + (d.title_collation if q.sort == "title" else "")
    idc = "b.id" + d.title_collation
    direction = "DESC" if q.descending else "ASC"
    if q.after is not None:
        value, last_id = q.after
        op = "<" if q.descending else ">"
        v, i = p(value), p(last_id)
        where += f" AND ({col} {op} {v} OR ({col} = {v} AND {idc} {op} {i}))"
    cols = ", ".join(f"b.{c.strip()}" for c in columns.split(","))
    order = f"{col} {direction}, {idc} {direction}"
    if q.sort == "title" and d.title_order_prefix:
        order = f"{d.title_order_prefix} {direction}, {order}"
    sql = f"{cte}SELECT {cols} FROM blocks b WHERE {where} ORDER BY {order} LIMIT {p(limit)}"
    return sql, p.values


def count_sql(d: Dialect, heap_id: str, q: BlockQuery) -> tuple[str, list[Any]]:
    p = _Params(d)
    cte, where = _where(d, p, heap_id, q)
    return f"{cte}SELECT b.type, COUNT(*) FROM blocks b WHERE {where} GROUP BY b.type", p.values
