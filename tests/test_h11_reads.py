"""web/h11_reads.py: h11's receive buffer hands a body part out without copying it twice, and
behaves exactly as upstream's: the same bytes out, the same bytes left, under any mix of
appends and extractions (lines, counts, all), and over a real socket with two requests in
one read."""

from __future__ import annotations

import random
from functools import partial

import trio
from h11._receivebuffer import ReceiveBuffer
from hypercorn.config import Config
from hypercorn.trio import serve

import heaper_trio.app  # noqa: F401  (applies the patches on import, as served)
from heaper_trio.web.h11_reads import buffer_handed_over, hand_the_buffer_over

from .test_read_size import PARTS, app


def _upstream(buf: ReceiveBuffer, count: int) -> bytearray | None:
    return ReceiveBuffer.maybe_extract_at_most.__wrapped__(buf, count)  # type: ignore[attr-defined]


def test_the_buffer_behaves_as_upstreams() -> None:
    assert buffer_handed_over()
    assert hand_the_buffer_over()  # idempotent
    rng = random.Random(12)
    alphabet = [b"a", b"\r\n", b"\n", b"xyz", b"\r\n\r\n", b"0"]
    for _ in range(300):
        ours, theirs = ReceiveBuffer(), ReceiveBuffer()
        for _ in range(40):
            op = rng.randrange(5)
            if op == 0:
                data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
                ours += data
                theirs += data
                continue
            if op == 1:
                count = rng.choice([0, 1, 3, len(ours), len(ours) + 5, 999999999])
                got, want = ours.maybe_extract_at_most(count), _upstream(theirs, count)
            elif op == 2:
                got, want = ours.maybe_extract_next_line(), theirs.maybe_extract_next_line()
            elif op == 3:
                got, want = ours.maybe_extract_lines(), theirs.maybe_extract_lines()  # type: ignore[assignment]
            else:
                got, want = (
                    ours.is_next_line_obviously_invalid_request_line(),
                    (theirs.is_next_line_obviously_invalid_request_line()),
                )
            assert got == want
            assert type(got) is type(want)
            assert bytes(ours) == bytes(theirs)


def test_what_is_handed_out_is_no_longer_the_buffer() -> None:
    buf = ReceiveBuffer()
    buf += b"body part"
    out = buf.maybe_extract_at_most(100)
    assert out == bytearray(b"body part") and len(buf) == 0
    buf += b"next"
    assert out == bytearray(b"body part") and bytes(buf) == b"next"


async def test_two_requests_in_one_read(nursery: trio.Nursery) -> None:
    PARTS.clear()
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    stop = trio.Event()
    urls = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
    port = int(urls[0].rsplit(":", 1)[1])
    wire = b""
    for path, body in ((b"/one", b"first body"), (b"/two", b"second")):
        wire += b"PUT %s HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s" % (
            path,
            len(body),
            body,
        )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(wire)  # one write: the server reads both at once
        got = b""
        with trio.fail_after(5):
            while got.count(b"HTTP/1.1 200") < 2 or len(got.rsplit(b"\r\n\r\n", 1)[1]) < 64:
                more = await stream.receive_some()
                assert more, got
                got += more
    stop.set()
    assert PARTS["/one"] == [len(b"first body")] and PARTS["/two"] == [len(b"second")]
