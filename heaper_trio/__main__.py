"""``python -m heaper_trio``.

A server that has shut down cleanly leaves without the interpreter's teardown (``os._exit``
once logs and output are flushed): its connections, database, threads' work and data-directory
lock are closed by then, and what remains is freeing every imported module object by object,
which took 1.0-1.5 s on a loaded 2-core machine (the server's own shutdown took 60 ms), so a
SIGTERM looked slow to whoever waits on the process (systemd, a container runtime, the
``--workers`` supervisor). Other commands exit the ordinary way, and so does a server measured
by coverage (it saves its data at exit).
"""

import logging
import os
import sys

from heaper_trio import cli

code = cli.main()
if cli.SERVED_CLEANLY and "coverage" not in sys.modules:
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # nobody reads our output any more: the ordinary exit copes with it
        raise SystemExit(code) from None
    os._exit(code)
raise SystemExit(code)
