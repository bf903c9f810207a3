"""The ``kdprune`` command: one entry point, one module per subcommand in ``kdprune/commands/``.

Each command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it; every command is also a plain Python call in the library.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from kdprune.errors import KDPruneError

COMMANDS = ("data", "teacher", "logits", "score", "prune", "train", "reproduce", "bench", "convert",
            "info", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdprune",
        description="Prune a training set and train on what is left, distilling a full-data teacher.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = f"kdprune.commands.{name}"
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:  # a command not built yet is absent, anything else is a bug
                continue
            raise
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KDPruneError as err:
        print(f"kdprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
