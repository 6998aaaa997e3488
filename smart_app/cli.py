"""`rpm-billing` command line: one subcommand per feature, each in its own module.

Each command module exposes `register(subparsers)` which adds its parser and sets `func` to a callable
taking the parsed arguments and returning an `ExitCode`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from smart_app.errors import ExitCode, RpmBillingError

# Command name -> its module. Only the module of the command being run is imported (the web app, the
# sandbox and the FHIR models cost most of a second to import); `rpm-billing --help` imports them all.
COMMANDS = {
    "compute": "smart_app.commands.compute",
    "synth": "smart_app.commands.synth",
    "sandbox": "smart_app.commands.sandbox",
    "month-end": "smart_app.commands.month_end",
    "serve": "smart_app.commands.serve",
    "try": "smart_app.commands.try_app",
    "demo": "smart_app.commands.demo",
}
COMMAND_MODULES = tuple(COMMANDS.values())

log = logging.getLogger("rpm_billing")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported and registered."""
    parser = argparse.ArgumentParser(
        prog="rpm-billing",
        description="Remote Patient Monitoring billing from FHIR: compute, write back, launch from the EHR.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail (never tokens or PHI)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The only option before the command is -v, which takes no value: the first other word is the command.
    command = next((word for word in arguments if not word.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return int(ExitCode.BAD_ARGUMENTS)
    try:
        return int(args.func(args))
    except RpmBillingError as exc:
        print(f"rpm-billing: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("rpm-billing: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
