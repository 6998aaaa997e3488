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

COMMAND_MODULES = (
    "smart_app.commands.compute",
    "smart_app.commands.synth",
    "smart_app.commands.sandbox",
    "smart_app.commands.month_end",
    "smart_app.commands.serve",
    "smart_app.commands.try_app",
    "smart_app.commands.demo",
)

log = logging.getLogger("rpm_billing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpm-billing",
        description="Remote Patient Monitoring billing from FHIR: compute, write back, launch from the EHR.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail (never tokens or PHI)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
