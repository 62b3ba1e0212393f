"""Live collaboration: the hub of rooms, one task set per WebSocket connection, the bridge from commits to rooms and across processes."""
