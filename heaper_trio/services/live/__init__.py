"""Live collaboration at run time: the hub of rooms, one task set per WebSocket connection
(reaching the services only through ``LiveContext``), and the bridge across processes."""
