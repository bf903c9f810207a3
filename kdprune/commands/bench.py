"""`kdprune bench NAME [ARGS...] [--out DIR]`: run a benchmark script and append its rows to DIR/NAME.csv.

The scripts are ``benchmarks/bench_NAME.py`` of the source tree, installed with the package as the
subpackage ``kdprune.benchmarks`` (as ``kernels/`` is installed as ``kdprune.kernels``), so the command
works from a wheel as well as from a checkout; from a checkout's root whose install predates the
subpackage, the checkout's ``benchmarks/`` is used. Results go to ``--out`` (default ``runs/bench``), never into the
repository: the committed ``benchmarks/results/*.csv`` are written only by running a script directly
(``python benchmarks/bench_NAME.py``), on purpose.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

DEFAULT_OUT = os.path.join("runs", "bench")


def register(sub):
    p = sub.add_parser(
        "bench", help="run a benchmark (loss, store, scores, loaders, ...) and record its rows",
        description="Runs the benchmark script bench_NAME.py, prints its table and appends one row per "
                    "measurement, tagged with machine, versions, date and commit, to OUT/NAME.csv. "
                    "Arguments after NAME go to the script (`kdprune bench loss --help` shows them); "
                    "--out is kdprune bench's own and may appear anywhere.")
    p.add_argument("--out", metavar="DIR", default=None,
                   help=f"directory of the results files (default {DEFAULT_OUT}); never the repository's")
    p.add_argument("name", help="benchmark name, e.g. loss; 'list' lists them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=run)


def bench_dir() -> str:
    """The folder holding the installed benchmark scripts; a ConfigError says how to get them."""
    from kdprune.errors import ConfigError

    folders = []
    for package in ("kdprune.benchmarks", "benchmarks"):
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            spec = None
        folders += list(spec.submodule_search_locations or []) if spec else []
    folders.append(os.path.join(os.getcwd(), "benchmarks"))  # a checkout's root, kdprune not reinstalled
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "harness.py")):
            return folder
    raise ConfigError("the benchmark scripts are not installed with this kdprune: reinstall it from a source "
                      "checkout (`make install`, or pip install [-e] .), or run kdprune bench from the checkout's root")


def list_benchmarks(folder: str | None = None) -> list[str]:
    folder = folder or bench_dir()
    return sorted(f[len("bench_"):-len(".py")] for f in os.listdir(folder)
                  if f.startswith("bench_") and f.endswith(".py"))


def _split_out(args: list[str]) -> tuple[list[str], str | None]:
    """Take ``--out DIR`` / ``--out=DIR`` out of the script's arguments."""
    rest, out, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--out" and i + 1 < len(args):
            out, i = args[i + 1], i + 2
            continue
        if a.startswith("--out="):
            out = a.split("=", 1)[1]
        elif not (a == "--" and i == 0):
            rest.append(a)
        i += 1
    return rest, out


def run(args) -> int:
    import runpy
    import shlex
    import sys

    from kdprune.errors import ConfigError

    folder = bench_dir()
    names = list_benchmarks(folder)
    if args.name == "list":
        print("\n".join(names))
        return 0
    if args.name not in names:
        raise ConfigError(f"no benchmark {args.name!r}; choose one of {', '.join(names)}")
    script_args, out = _split_out(list(args.args))
    out = os.path.abspath(out or args.out or DEFAULT_OUT)
    os.makedirs(out, exist_ok=True)
    script = os.path.join(folder, f"bench_{args.name}.py")
    env = {"KDPRUNE_BENCH_OUT": out,
           "KDPRUNE_BENCH_COMMAND": shlex.join(["kdprune", "bench", args.name, *script_args])}
    saved = sys.argv, list(sys.path), {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.argv = [script, *script_args]
    sys.path.insert(0, folder)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
        if code not in (None, 0):
            return code if isinstance(code, int) else 1
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        for k, v in saved[2].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print(f"kdprune bench: results in {out}")
    return 0
