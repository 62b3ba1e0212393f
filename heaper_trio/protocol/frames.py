"""Frames for fan-out: one body encoded once, sent behind each subscriber's own address.

A committed update goes to every subscriber of a document, each under the address it opened
the document with (a plain name, or ``name + "\\0" + session``). Encoding the whole frame per
subscriber would copy the update N times; the hub encodes the address prefix once per
subscription and the body once per batch, and sends ``prefix + body``. The result is exactly
:func:`heaper_trio.protocol.messages.encode` of the same message (a test checks it).
"""

from __future__ import annotations

from heaper_trio.protocol.messages import AWARENESS, STATELESS, STEP1, STEP2, SYNC, UPDATE
from heaper_trio.protocol.wire import var_bytes, var_string


def address_prefix(address: str) -> bytes:
    """The frame's first field, ``varString(address)``; a subscription keeps it."""
    return var_string(address)


def sync_update_body(update: bytes) -> bytes:
    """``Sync · Update · varBytes(update)``: what the others lack after a commit."""
    return bytes((SYNC, UPDATE)) + var_bytes(update)


def awareness_body(payload: bytes) -> bytes:
    """``Awareness · varBytes(payload)``, payload from ``messages.encode_awareness``."""
    return bytes((AWARENESS,)) + var_bytes(payload)


def sync_step1_body(state_vector: bytes) -> bytes:
    """``Sync · Step1 · varBytes(state vector)``: "send me what I lack" (a room set back to
    storage asks its subscribers, ``room_resets``)."""
    return bytes((SYNC, STEP1)) + var_bytes(state_vector)


def sync_step2_body(update: bytes) -> bytes:
    """``Sync · Step2 · varBytes(update)``: the last piece of a whole state sent anew."""
    return bytes((SYNC, STEP2)) + var_bytes(update)


def stateless_body(payload: str) -> bytes:
    """``Stateless · varString(payload)``: an event (JSON) for the document's subscribers."""
    return bytes((STATELESS,)) + var_string(payload)
