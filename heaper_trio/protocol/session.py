"""One ``/ws`` connection's protocol state, without I/O (the h11 way).

``LiveSession.receive(frame)`` decodes a client frame and returns the actions it calls for;
the connection runner performs them (verify a token, hand a message to a document, send a
frame, disconnect) and reports back through :meth:`authorized` / :meth:`denied`. Everything
the Hocuspocus server does at the connection level lives here, so unit tests can drive it:

* Each document on the socket is authorized on its own. The stock provider sends its auth
  message, sync step 1 and awareness back to back without waiting, so messages for a document
  whose authorization is still running are queued and replayed in order once it succeeds.
* Before a document is authorized, a connection may queue at most ``max_pending_bytes`` and
  ``max_pending_messages`` and wait on ``max_pending_documents`` (Hocuspocus: 5 MiB, 1,000,
  100); past that it is reset (4205), as an unauthenticated peer must not grow our memory.
* A malformed frame ends the connection (1002): decoding never raises anything else.
* Timers are Hocuspocus': a connection silent for 60 s, or without an authorized document
  after 60 s, is closed (4408); a v4+ provider that has heard nothing for 15 s gets a Ping (its
  own liveness timer fires at 30 s). The session reads no clock: the runner reports when
  frames came and went (:meth:`heard`, :meth:`wrote`) and asks :meth:`tick` what is due, each
  time with ``now`` in seconds of any monotonic clock (trio's, so tests can fake it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heaper_trio.protocol import messages as m
from heaper_trio.protocol.close_codes import CLOSE_PROTOCOL_ERROR, CLOSE_RESET, CLOSE_TIMEOUT
from heaper_trio.protocol.wire import ProtocolError


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    frame: bytes


@dataclass(frozen=True, slots=True)
class Authorize:
    """Check ``token`` (None: use the connection's own token) for the document at ``address``;
    answer with :meth:`LiveSession.authorized` or :meth:`LiveSession.denied`. ``renewal``: the
    document is open already and the client sent a fresh token (before the old one expires)."""

    address: str
    token: str | None
    provider_version: str | None
    renewal: bool = False


@dataclass(frozen=True, slots=True)
class OpenDocument:
    """The document at ``address`` is authorized: subscribe it. Deliveries follow."""

    address: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for an open document (sync, awareness, query awareness, stateless)."""

    address: str
    message: m.Message


@dataclass(frozen=True, slots=True)
class CloseDocument:
    """The document at ``address`` is closed (by the client, or its authorization ended)."""

    address: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: int
    reason: str


Action = Send | Authorize | OpenDocument | Deliver | CloseDocument | Disconnect


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_pending_bytes: int = 5 * 1024 * 1024
    max_pending_messages: int = 1000
    max_pending_documents: int = 100
    max_open_documents: int = 1000


@dataclass(frozen=True, slots=True)
class Timeouts:
    idle_s: float = 60.0  # Hocuspocus server default
    auth_s: float = 60.0
    ping_after_s: float = 15.0  # provider v4 answers Ping [9] with Pong [10]; its timer is 30 s


def answers_ping(provider_version: str | None) -> bool:
    """Providers before v4 do not know Ping and would drop the connection on one."""
    try:
        return provider_version is not None and int(provider_version.split(".")[0]) >= 4
    except ValueError:
        return False


@dataclass
class _Pending:
    authorizing: bool = False
    queue: list[tuple[m.Message, int]] = field(default_factory=list)  # (message, frame size)


class LiveSession:
    def __init__(
        self,
        *,
        connection_token: bool,
        limits: SessionLimits | None = None,
        timeouts: Timeouts | None = None,
        now: float = 0.0,
    ) -> None:
        self.connection_token = connection_token  # a token came with the upgrade request
        self.limits = limits or SessionLimits()
        self.timeouts = timeouts or Timeouts()
        self.opened_at = self.last_in = self.last_out = now
        self.pending: dict[str, _Pending] = {}
        self.open: set[str] = set()
        self.provider_version: str | None = None
        self.ever_authorized = False
        self.closed = False
        self._queued_bytes = 0
        self._queued_messages = 0

    # -- input --------------------------------------------------------------------------------
    def receive(self, frame: bytes) -> list[Action]:
        if self.closed:
            return []
        try:
            message = m.decode_client_frame(frame)
        except ProtocolError as e:
            return self._disconnect(CLOSE_PROTOCOL_ERROR, f"malformed frame: {e}")
        if isinstance(message, m.Ping):
            return [Send(m.encode(m.Pong()))]
        if isinstance(message, m.Pong):
            return []
        address = message.address
        if isinstance(message, m.AuthToken):
            return self._auth_message(message)
        if isinstance(message, m.Close):
            return self._client_closed(address)
        if address in self.open:
            return [Deliver(address, message)]
        return self._queue(address, message, len(frame))

    def _auth_message(self, message: m.AuthToken) -> list[Action]:
        address = message.address
        if message.provider_version:
            self.provider_version = message.provider_version
        token = message.token or None
        if address in self.open:
            return [Authorize(address, token, message.provider_version, renewal=True)]
        pending = self.pending.get(address)
        if pending is None:
            if len(self.pending) >= self.limits.max_pending_documents:
                return self._disconnect(CLOSE_RESET, "too many documents waiting for auth")
            pending = self.pending[address] = _Pending()
        if pending.authorizing:
            return []  # the answer to the first one is on its way
        pending.authorizing = True
        return [Authorize(address, token, message.provider_version)]

    def _queue(self, address: str, message: m.Message, size: int) -> list[Action]:
        actions: list[Action] = []
        pending = self.pending.get(address)
        if pending is None:
            if len(self.pending) >= self.limits.max_pending_documents:
                return self._disconnect(CLOSE_RESET, "too many documents waiting for auth")
            pending = self.pending[address] = _Pending()
            if self.connection_token:  # no auth message needed: the upgrade carried a token
                pending.authorizing = True
                actions.append(Authorize(address, None, None))
        if (
            self._queued_bytes + size > self.limits.max_pending_bytes
            or self._queued_messages + 1 > self.limits.max_pending_messages
        ):
            return self._disconnect(CLOSE_RESET, "too much data before authentication")
        pending.queue.append((message, size))
        self._queued_bytes += size
        self._queued_messages += 1
        return actions

    def _client_closed(self, address: str) -> list[Action]:
        if address in self.open:
            self.open.discard(address)
            return [CloseDocument(address)]
        self._forget_pending(address)
        return []

    # -- answers from the runner ----------------------------------------------------------------
    def authorized(self, address: str, scope: str = "read-write") -> list[Action]:
        if self.closed:
            return []
        if address in self.open:
            return []  # a renewal: nothing to tell
        pending = self._forget_pending(address)
        if pending is None:
            return []  # closed by the client meanwhile
        if len(self.open) >= self.limits.max_open_documents:
            return [Send(m.encode(m.PermissionDenied(address, "too many open documents")))]
        self.open.add(address)
        self.ever_authorized = True
        actions: list[Action] = [
            Send(m.encode(m.Authenticated(address, scope))),
            OpenDocument(address),
        ]
        actions += [Deliver(address, message) for message, _ in pending.queue]
        return actions

    def denied(self, address: str, reason: str) -> list[Action]:
        """Authorization refused, or (for an open document) withdrawn: token expired, account
        revoked, heap gone. The socket stays up for the connection's other documents."""
        if self.closed:
            return []
        actions: list[Action] = [Send(m.encode(m.PermissionDenied(address, reason)))]
        if address in self.open:
            self.open.discard(address)
            actions.append(CloseDocument(address))
        elif self._forget_pending(address) is None:
            return []
        return actions

    def _forget_pending(self, address: str) -> _Pending | None:
        pending = self.pending.pop(address, None)
        if pending is not None:
            self._queued_bytes -= sum(size for _, size in pending.queue)
            self._queued_messages -= len(pending.queue)
        return pending

    def _disconnect(self, code: int, reason: str) -> list[Action]:
        self.closed = True
        closing: list[Action] = [CloseDocument(a) for a in sorted(self.open)]
        self.open.clear()
        self.pending.clear()
        return [*closing, Disconnect(code, reason)]

    def disconnect(self, code: int, reason: str) -> list[Action]:
        """The runner ends the connection (shutdown, slow consumer)."""
        if self.closed:
            return []
        return self._disconnect(code, reason)

    # -- time -----------------------------------------------------------------------------------
    def heard(self, now: float) -> None:
        """A frame (of any kind, even one refused) came in at ``now``."""
        self.last_in = now

    def wrote(self, now: float) -> None:
        """A frame went out at ``now``."""
        self.last_out = now

    def tick(self, now: float) -> list[Action]:
        """What the timers call for at ``now``: a timeout's disconnect, a keepalive Ping
        (sent only if the outbox has room: a peer that far behind needs no ping), or nothing."""
        if self.closed:
            return []
        t = self.timeouts
        if now - self.last_in > t.idle_s:
            return self._disconnect(CLOSE_TIMEOUT, "no message for too long")
        if not self.ever_authorized and now - self.opened_at > t.auth_s:
            return self._disconnect(CLOSE_TIMEOUT, "no document authorized in time")
        if now - self.last_out > t.ping_after_s and answers_ping(self.provider_version):
            return [Send(m.encode(m.Ping()))]
        return []
