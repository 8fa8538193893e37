"""The ``sss`` command line: every command, and the only part of sss that knows argparse.

Adding a command is one module and one line: write ``sss/cli/NAME.py`` with
``add_command(subparsers)`` (it adds its parser and sets ``func``, a callable taking the parsed
``args`` and returning an exit code), and add ``"NAME": "sss.cli.NAME"`` to :data:`COMMANDS`.
A command's module is imported only when the parser is built. Shared options (model, data,
device, ``--sss-*``, ``--option``) and the distributed set-up are in :mod:`sss.cli.options`.

Nothing else in sss imports this package; it imports whatever it needs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Dict, Optional, Sequence

from .options import configure_logging, parse_options

# command name -> module with add_command(subparsers)
COMMANDS: Dict[str, str] = {
    "eval": "sss.cli.eval",
    "demo": "sss.cli.demo",
    "train": "sss.cli.train",
    "study": "sss.cli.study",
    "stats": "sss.cli.stats",
}

__all__ = ["COMMANDS", "build_parser", "main", "parse_options"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported like every other bad input: one line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from ..editors import discover

    editors = ", ".join(cls.display_name for cls in discover().values())
    parser = ArgumentParser(
        prog="sss", description=f"Knowledge editing ({editors}) with the SSS regularizer. Start with "
                                "'sss demo'; each sub-command has its own --help.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).add_command(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command. Bad input (any ``ValueError``: a wrong option, a missing or damaged file)
    is printed as ``sss COMMAND: error: ...`` and exits 2, without a traceback unless ``-v``."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, so the message names it (sss eval: error: ...)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(getattr(args, "verbose", False))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away is caught below, not at exit
        return code
    except BrokenPipeError:  # stdout closed early (| head): nothing more to say, and no traceback
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        return 141
    except ValueError as error:  # bad input: one clear line instead of a traceback (-v keeps it)
        if getattr(args, "verbose", False):
            raise
        parser.exit(2, f"sss {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        if getattr(args, "verbose", False):
            raise
        parser.exit(130, f"sss {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
