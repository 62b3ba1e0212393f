"""Fan-out frames equal the codec's, close codes are documented, and one varUint reader
serves the whole package."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heaper_trio import crdt
from heaper_trio.protocol import close_codes, frames, split, wire
from heaper_trio.protocol import messages as m

addresses = st.text(max_size=30)


@given(addresses, st.binary(max_size=300))
def test_prefix_and_body_are_the_encoded_message(address: str, payload: bytes) -> None:
    prefix = frames.address_prefix(address)
    assert prefix + frames.sync_update_body(payload) == m.encode(m.SyncUpdate(address, payload))
    assert prefix + frames.awareness_body(payload) == m.encode(m.Awareness(address, payload))


def test_every_close_code_is_documented_with_its_reason() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    for code in close_codes.ALL:
        assert f"| {code} |" in section, code
    declared = {v for k, v in vars(close_codes).items() if k.startswith("CLOSE_")}
    assert declared == set(close_codes.ALL)


@given(st.binary(max_size=12), st.integers(0, 3))
def test_the_one_varuint_reader_agrees_with_the_decoder(data: bytes, pos: int) -> None:
    try:
        value, end = wire.read_var_uint(data, pos)
    except wire.ProtocolError:
        with pytest.raises(wire.ProtocolError):
            d = wire.Decoder(data[pos:])
            d.read_var_uint()
        return
    d = wire.Decoder(data[pos:])
    assert (d.read_var_uint(), pos + d.pos) == (value, end)


@given(st.integers(0, wire.MAX_VAR_UINT))
def test_varuint_round_trip(n: int) -> None:
    encoded = wire.var_uint(n)
    assert wire.read_var_uint(b"\xff" + encoded + b"\x00", 1) == (n, 1 + len(encoded))


@pytest.mark.parametrize(
    "data",
    ["", "80", "8080", "808080", "ffffffffffffff7f", "808080808080808000", "ffffffffffffffff01"],
)
def test_truncated_or_oversized_varuints_are_refused_everywhere(data: str) -> None:
    raw = bytes.fromhex(data)
    with pytest.raises(wire.ProtocolError):
        wire.read_var_uint(raw, 0)
    # the update walker and the state-vector check refuse the same bytes
    assert not split.decodes_exactly(raw + b"\x00")
    with pytest.raises(crdt.InvalidUpdate):
        crdt.check_state_vector(raw)
