"""`kdprune bench NAME`: run a benchmark script of the source checkout (benchmarks/bench_NAME.py)."""
import os


def _bench_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "benchmarks")


def register(sub):
    p = sub.add_parser("bench", help="run a benchmark (loss, store, loaders, scores) and print its table",
                       description="Runs benchmarks/bench_NAME.py from the source checkout; each prints a "
                                   "table and writes benchmarks/results/NAME.json.")
    p.add_argument("name", help="benchmark name, e.g. loss; 'list' lists them")
    p.add_argument("args", nargs="*", help="arguments passed to the script (after --)")
    p.set_defaults(func=run)


def run(args):
    import runpy
    import sys

    from kdprune.errors import ConfigError

    folder = _bench_dir()
    if not os.path.isdir(folder):
        raise ConfigError("benchmarks/ is not next to this kdprune install; run from a source checkout")
    names = sorted(f[6:-3] for f in os.listdir(folder) if f.startswith("bench_") and f.endswith(".py"))
    if args.name == "list":
        print("\n".join(names))
        return 0
    if args.name not in names:
        raise ConfigError(f"no benchmark {args.name!r}; choose one of {', '.join(names)}")
    sys.argv = [f"bench_{args.name}.py", *args.args]
    sys.path.insert(0, folder)
    runpy.run_path(os.path.join(folder, f"bench_{args.name}.py"), run_name="__main__")
    return 0
