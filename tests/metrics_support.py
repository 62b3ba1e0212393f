"""Scraping ``GET /metrics`` in tests (tests/test_metrics.py, tests/test_workers.py): parsed
with prometheus_client's own parser into {(sample name, labels): value}."""

from __future__ import annotations

from collections import Counter

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = Counter[tuple[str, frozenset[tuple[str, str]]]]


def parse(text: str) -> Samples:
    out: Samples = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] += s.value
    return out


async def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as c:
        r = await c.get(url + "/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
