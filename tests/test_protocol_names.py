"""Document names on ``/ws`` as pure code: the contract's ``<heap>:<block>[:vN]`` and the Heaper
app's ``block/<block>?workspaceId=<heap>`` name the same block documents (fuzzed)."""

from __future__ import annotations

import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.protocol.names import (
    BlockName,
    EventsName,
    app_document_name,
    parse_document_name,
)

IDS = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=128)
VERSIONS = st.none() | st.integers(min_value=0, max_value=999_999_999)
# parameters the app might add that mean nothing here: ignored
OTHER_PARAMS = st.lists(
    st.tuples(
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=8).filter(
            lambda k: k not in ("workspaceId", "syncVersion")
        ),
        st.text(alphabet=string.ascii_letters + string.digits + "%./", max_size=12),
    ),
    max_size=3,
)


def test_app_names_are_block_documents() -> None:
    assert parse_document_name("block/b1?workspaceId=h1") == BlockName("h1", "b1", None)
    assert parse_document_name("block/b1?workspaceId=h1&syncVersion=4") == BlockName("h1", "b1", 4)
    assert parse_document_name("block/b1?syncVersion=4&workspaceId=h1") == BlockName("h1", "b1", 4)
    assert parse_document_name("block/b1?client=web&workspaceId=h1") == BlockName("h1", "b1", None)
    assert parse_document_name("block/b1?workspaceId=h1\x00sess") == BlockName("h1", "b1", None)
    assert parse_document_name("block/b1?workspaceId=h1&syncVersion=0") == BlockName("h1", "b1", 0)
    # the same block as the contract's names
    assert parse_document_name("block/b1?workspaceId=h1") == parse_document_name("h1:b1")
    assert parse_document_name(app_document_name("h1", "b1", 7)) == parse_document_name("h1:b1:v7")
    assert parse_document_name(app_document_name("h1", "b1")) == BlockName("h1", "b1", None)
    assert parse_document_name("events") == EventsName()


def test_malformed_app_names_name_nothing() -> None:
    for bad in (
        "block/b1",  # no heap: which heap's block cannot be guessed
        "block/b1?",
        "block/b1?workspaceId=",
        "block/b1?workspaceid=h1",  # the parameter's name is exact
        "block/?workspaceId=h1",
        "block/b/1?workspaceId=h1",
        "block/b1?workspaceId=h/1",
        "block/b1?workspaceId=h%31",  # no percent-decoding: ids never need it
        "block/b1?workspaceId=h1&workspaceId=h2",  # which heap?
        "block/b1?workspaceId=h1&syncVersion=1&syncVersion=2",
        "block/b1?workspaceId=h1&syncVersion=",
        "block/b1?workspaceId=h1&syncVersion=v1",
        "block/b1?workspaceId=h1&syncVersion=-1",
        "block/b1?workspaceId=h1&syncVersion=1234567890",  # 10 digits, as :vN refuses
        "block/b1?workspaceId=h1&syncVersion=٣",  # ASCII digits only
        "block/b1?workspaceId=h1&flag",  # a parameter without "="
        "block/b1?workspaceId=h1\n",
        "Block/b1?workspaceId=h1",
        "blocks/b1?workspaceId=h1",
        " block/b1?workspaceId=h1",
        "block/" + "a" * 129 + "?workspaceId=h1",
        "block/b1?workspaceId=" + "a" * 129,
    ):
        assert parse_document_name(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(IDS, IDS, VERSIONS, OTHER_PARAMS, st.randoms(use_true_random=False), st.booleans())
def test_app_names_round_trip(
    heap: str,
    block: str,
    version: int | None,
    others: list[tuple[str, str]],
    rnd: random.Random,
    session: bool,
) -> None:
    """Any ids, any version, the parameters in any order with unknown ones among them: the
    same block and version as the contract's name for them."""
    params = [f"workspaceId={heap}", *(f"{k}={v}" for k, v in others)]
    if version is not None:
        params.append(f"syncVersion={version}")
    rnd.shuffle(params)
    address = f"block/{block}?{'&'.join(params)}" + ("\x00s1" if session else "")
    contract = f"{heap}:{block}" + (f":v{version}" if version is not None else "")
    assert parse_document_name(address) == BlockName(heap, block, version)
    assert parse_document_name(address) == parse_document_name(contract)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(lambda rest: "block/" + rest, st.text(max_size=200)),
        st.builds(
            lambda b, rest: f"block/{b}?" + rest,
            IDS,
            st.text(alphabet=string.printable + "é\x00", max_size=200),
        ),
    )
)
def test_any_text_parses_or_names_nothing(address: str) -> None:
    """Never raises; whatever it names has ids a route would take and a bounded version."""
    name = parse_document_name(address)
    if isinstance(name, BlockName):
        for part in (name.heap_id, name.block_id):
            assert 1 <= len(part) <= 128 and all(
                c in string.ascii_letters + string.digits + "_-" for c in part
            ), address
        assert name.sync_version is None or 0 <= name.sync_version < 10**9
