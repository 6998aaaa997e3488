"""What every long-running command (sandbox, serve, try) does the same way."""

from __future__ import annotations

import logging
import signal
import threading


def quiet_request_log(verbose: bool) -> None:
    """werkzeug logs every request line with its query string (codes, states); keep that for --verbose."""
    if not verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so a service manager's stop shuts the servers down cleanly."""
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)
