"""WebSocket close codes ``/ws`` and ``/api/ws`` end a connection with, each with its reason.

Declared once here: the session, the connection runner and the web layer use these names, and
a test checks that docs/protocol.md lists every one (a client decides from the code whether to
reconnect at once, back off, or stop). The 4xxx codes follow Hocuspocus, which borrows HTTP's
meanings (4401 unauthorized, 4408 timeout, 4429 too many requests).
"""

from __future__ import annotations

CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_PROTOCOL_ERROR = 1002  # a malformed frame
CLOSE_UNSUPPORTED_DATA = 1003  # a text frame on the binary protocol
CLOSE_MESSAGE_TOO_BIG = 1009  # over ws_max_message_bytes (hypercorn closes with it)
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # a consumer too slow for its queue: reconnect and resync
CLOSE_RESET = 4205  # too much before authentication
CLOSE_UNAUTHORIZED = 4401  # /api/ws without an accepted token
CLOSE_TIMEOUT = 4408  # idle, or no document authorized in time
# Over ws_max_connections_per_user (HTTP 429's meaning in Hocuspocus' 4xxx range); the provider
# retries with backoff, and gets in once one of the account's other sockets has closed.
CLOSE_TOO_MANY_CONNECTIONS = 4429

ALL = (
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_INTERNAL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_RESET,
    CLOSE_UNAUTHORIZED,
    CLOSE_TIMEOUT,
    CLOSE_TOO_MANY_CONNECTIONS,
)
