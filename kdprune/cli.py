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
# commands that pick up where an interrupted run stopped when the same command is run again
RERUN_RESUMES = ("logits", "pipeline", "reproduce")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdprune",
        description="Prune a training set and train on what is left, distilling a full-data teacher.")
    from kdprune import __version__
    parser.add_argument("--version", action="version", version=f"kdprune {__version__}",
                        help="print the version and exit")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KDPruneError as err:
        print(f"kdprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        import os
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, from rank 0
            lead = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line first
            print(lead + interrupted_line(args, argv, getattr(err, "saved", None)), file=sys.stderr, flush=True)
        return 130
    return int(result or 0)


def interrupted_line(args, argv: list, saved: str | None) -> str:
    """The one line Ctrl-C ends a command with: what was saved and the command that resumes."""
    import shlex

    flag = getattr(args, "resume_flag", None)
    if saved and flag:
        argv = [a for a in argv if a != "--overwrite"] + ([] if flag in argv else [flag])
        return f"kdprune {args.command}: interrupted; {saved}; resume with: kdprune {shlex.join(argv)}"
    if saved and args.command in RERUN_RESUMES:
        return f"kdprune {args.command}: interrupted; {saved}; resume with: kdprune {shlex.join(argv)}"
    if args.command in RERUN_RESUMES:
        return (f"kdprune {args.command}: interrupted; what was finished is kept; resume with: "
                f"kdprune {shlex.join(argv)}")
    return f"kdprune {args.command}: interrupted; {saved or 'nothing was saved'}"


if __name__ == "__main__":
    sys.exit(main())
