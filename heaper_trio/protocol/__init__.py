"""The live wire protocol, pure: no I/O, no clock, standard library only (a layout test checks).

lib0 encoding (``wire``), Hocuspocus messages and fan-out frames (``messages``, ``frames``),
close codes, the per-connection state machine and its timers (``session``), presence, document
names, typed events, the announcement between server processes (``announce``), and the Yjs
update splitter (``split``).
"""
