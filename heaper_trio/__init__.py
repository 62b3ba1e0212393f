"""heaper_trio: a self-hosted Heaper server built on trio.

The package layout mirrors the architecture: ``web`` (HTTP and WebSocket edge) calls
``services`` (behaviour), which call ``storage`` (two engines behind one interface).
"""

__version__ = "0.1.0"
