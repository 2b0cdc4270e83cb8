"""``dualbladed`` entry point."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence

from dualbladed.config import load_config
from dualbladed.errors import DualbladeError
from dualbladed.logs import configure_logging
from dualbladed.server import Daemon

logger = logging.getLogger("dualbladed")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except DualbladeError as err:
        print(f"dualbladed: {err}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    # SIGUSR1 writes every thread's stack to stderr (the journal): the one way to see where a
    # daemon that does not stop, or does not answer, is stuck, without a debugger on the box.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    daemon = Daemon(config)
    daemon.trap_signals()
    try:
        daemon.start()
    except DualbladeError as err:
        # One line on stderr (the journal keeps it): a log record too would say it twice.
        print(f"dualbladed: cannot start: {err}", file=sys.stderr)
        return 1
    daemon.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
