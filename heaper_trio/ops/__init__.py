"""Operating a server from the command line: backup and restore (``python -m heaper_trio
backup DEST``, ``restore SRC --data-dir NEW``). ``commands`` adds them to the CLI."""
