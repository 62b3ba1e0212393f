"""The HTTP and WebSocket edge: parse, call one service, shape the answer."""
