#!/usr/bin/env python3
"""History benchmark (issue 10), in process against one engine (no HTTP server): what block
history costs in storage, and that it stays out of the load path.

A block gets a month of edits through ``DocumentService.push_live`` (the push pipeline,
compaction included) under a moved clock: ``--days`` days of ``--per-day`` typed words each,
spread over eight hours a day. Then:

* ``bytes_per_update``: bytes kept in history and log per update, as pushed (``raw``) and after
  the thinning pass at the end of the month (``thinned``: per hour past a day, per day past a
  week), against the mean update size and the block's document size;
* ``load``: p50/p99 of loading the block for a push or pull (``load_block`` plus building the
  document, what a cache miss costs) for this block and for a block holding the same document
  with no history (created from its full state), measured alternately in the same run;
  ``ratio`` is with history over without: history is not read on load, so it should be ~1.

Run alone (prints one JSON object) or as the ``history`` section of ``bench_sync.py``::

    ./.venv/bin/python scripts/bench_history.py
    ./.venv/bin/python scripts/bench_history.py --engine postgres --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pycrdt
import trio

from heaper_trio.aio import open_asyncio_loop
from heaper_trio.records import NewRefreshToken, User
from heaper_trio.services import push_prepare
from heaper_trio.services.container import open_storage
from heaper_trio.services.documents import DocumentService
from heaper_trio.settings import load_settings

DAY_MS = 24 * 3600 * 1000
START_MS = 1_780_000_000_000


def _doc() -> tuple[pycrdt.Doc, pycrdt.XmlText]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    title = doc.get("title_v0", type=pycrdt.XmlFragment)
    content = doc.get("content_v0", type=pycrdt.XmlFragment)
    meta = doc.get("meta_v0", type=pycrdt.Map)
    with doc.transaction():
        meta["type"] = "document"
        t = pycrdt.XmlElement("paragraph")
        title.children.append(t)
        t.children.append(pycrdt.XmlText("A month of notes"))
        p = pycrdt.XmlElement("paragraph")
        content.children.append(p)
        last = pycrdt.XmlText("Started.")
        p.children.append(last)
    return doc, last


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


async def _user(documents: DocumentService) -> User:
    storage = documents.storage
    key, challenge = f"bench-{uuid.uuid4().hex}", uuid.uuid4().hex
    await storage.create_challenge(challenge, key, START_MS, START_MS + 60_000)
    out = await storage.complete_login(
        challenge=challenge,
        public_key=key,
        now=START_MS,
        new_user_id=str(uuid.uuid4()),
        email=None,
        auto_approve=True,
        refresh=NewRefreshToken(uuid.uuid4().hex, uuid.uuid4().hex, START_MS, START_MS + 1),
    )
    assert out.user is not None
    return out.user


async def _history_bytes(documents: DocumentService, block_id: str) -> tuple[int, int]:
    rows = await documents.storage.history_page(block_id, 2**62, 1_000_000, False)
    return sum(r.size for r in rows), len(rows)


async def measure(engine: str, database_url: str, days: int, per_day: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="heaper-bench-history-") as tmp:
        env = {"HEAPER_DATA_DIR": tmp, "HEAPER_DATABASE_URL": database_url}
        settings = load_settings(environ=env)
        async with open_asyncio_loop(), open_storage(settings) as storage:
            now = [START_MS]
            documents = DocumentService(storage, settings, clock=lambda: now[0] / 1000)
            user = await _user(documents)
            heap = await documents.create_heap(user, "History bench", None)
            rnd = random.Random(1)
            doc, last = _doc()
            block_id, synced = str(uuid.uuid4()), b"\x00"
            pushed: list[Any] = []
            t0 = time.perf_counter()
            for day in range(days):
                for i in range(per_day):
                    now[0] = START_MS + day * DAY_MS + i * (8 * 3600 * 1000 // per_day)
                    if pushed:
                        last.insert(len(last), " " + rnd.choice(("note", "idea", "plan", "read")))
                    update = doc.get_update(synced)
                    synced = doc.get_state()
                    pushed.append(len(update))
                    out = await documents.push_live(user, heap.id, block_id, [update], None, None)
                    assert out.status.value in ("ok", "created"), out
            fill_s = time.perf_counter() - t0
            end = START_MS + days * DAY_MS
            raw_bytes, raw_rows = await _history_bytes(documents, block_id)
            await documents.history.maintain(end)
            thin_bytes, thin_rows = await _history_bytes(documents, block_id)

            plain_id = str(uuid.uuid4())
            full = doc.get_update()
            out = await documents.push_live(user, heap.id, plain_id, [full], None, None)
            assert out.status.value == "created", out

            loads: dict[str, list[float]] = {"with_history": [], "without_history": []}
            for _ in range(300):
                for name, bid in (("with_history", block_id), ("without_history", plain_id)):
                    t = time.perf_counter()
                    base = await push_prepare.load_base(documents.storage, bid)
                    loads[name].append(time.perf_counter() - t)
                    assert base is not None
            p50 = {k: statistics.median(v) for k, v in loads.items()}
            n = len(pushed)
            return {
                "engine": engine,
                "updates": n,
                "days": days,
                "fill_s": round(fill_s, 2),
                "update_bytes_mean": round(statistics.mean(pushed), 1),
                "document_bytes": len(full),
                "bytes_per_update": {
                    "raw": round(raw_bytes / n, 1),
                    "raw_rows": raw_rows,
                    "thinned": round(thin_bytes / n, 1),
                    "thinned_rows": thin_rows,
                },
                "load": {
                    k: {"p50_ms": round(p50[k] * 1e3, 3), "p99_ms": round(_p(v, 99) * 1e3, 3)}
                    for k, v in loads.items()
                },
                "load_ratio_with_over_without": round(
                    p50["with_history"] / p50["without_history"], 3
                ),
            }


def run(engine: str, database_url: str, days: int = 30, per_day: int = 100) -> dict[str, Any]:
    return trio.run(measure, engine, database_url, days, per_day)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--per-day", type=int, default=100)
    args = p.parse_args(argv)
    if (args.engine == "postgres") != bool(args.database_url):
        p.error("--database-url goes with --engine postgres, and only with it")
    print(json.dumps(run(args.engine, args.database_url, args.days, args.per_day), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
