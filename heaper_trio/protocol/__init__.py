"""Live collaboration over WebSocket: the Hocuspocus wire protocol and document sessions."""
