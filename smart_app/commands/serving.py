"""What every long-running command (sandbox, serve, try) does the same way."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

from smart_app.errors import ExitCode


class Server(Protocol):
    """A server running in a background thread (the sandbox, the web app)."""

    def is_serving(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> None: ...


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


def serve_until_stopped(
    command: str,
    servers: Sequence[Server],
    stop: Callable[[], None],
    announce: Callable[[], str],
    out: TextIO,
) -> ExitCode:
    """Print `announce()`, then serve until Ctrl-C, SIGTERM or one of `servers` stops; `stop()` in any case
    (also when announcing fails)."""
    try:
        print(announce(), file=out, flush=True)
        stop_on_sigterm()
        while all(server.is_serving() for server in servers):
            servers[0].wait(0.5)
    except KeyboardInterrupt:
        print(f"rpm-billing {command}: stopped", file=out, flush=True)
    finally:
        stop()
    return ExitCode.OK
