"""The harness every benchmark script shares: timing, a printed table, and one CSV per benchmark.

Each run appends its rows to ``<results dir>/<name>.csv``; every row carries the run's tags (``date``
in UTC, ``commit``, ``machine``, ``versions``, ``command``, ``config``), so one file holds the
benchmark's whole history and a figure can always be traced to what produced it, as Liger-Kernel's
``benchmark/data/all_benchmark_data.csv`` does. The results directory is, in this order: the ``out``
argument, the environment variable ``KDPRUNE_BENCH_OUT`` (``kdprune bench --out`` sets it), or
``benchmarks/results/`` when the scripts sit in a source checkout (a run recorded on purpose, to be
committed), else ``runs/bench`` under the working directory.

Every script measures ours against a baseline in the same run and reports ratios; nothing here
asserts a speed.

    from harness import bench, report
    row = {"method": "ours", **bench(lambda: op(x))}
    report("my_bench", [row], ["method", "median_ms"], batch=1024)   # prints, appends my_bench.csv
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_ENV = "KDPRUNE_BENCH_OUT"
TAGS = ["benchmark", "date", "commit", "machine", "versions", "command", "config"]
_OPTIONAL_PACKAGES = ("numpy", "triton", "ffcv", "nvidia.dali", "numba", "liger_kernel")


def results_dir(out: str | os.PathLike | None = None) -> str:
    """Where results go: ``out``, else ``$KDPRUNE_BENCH_OUT``, else the checkout's
    ``benchmarks/results``, else ``./runs/bench`` (an installed package never writes into itself)."""
    if out is not None:
        return os.fspath(out)
    if os.environ.get(OUT_ENV):
        return os.environ[OUT_ENV]
    root = os.path.dirname(HERE)
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.basename(HERE) == "benchmarks":
        return os.path.join(HERE, "results")
    return os.path.join("runs", "bench")


def machine() -> str:
    """One line naming the machine: CPU model and cores, and the GPU or "no GPU"."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


def versions() -> str:
    """``name=version`` of python, torch, kdprune and every optional package this process imported."""
    from importlib import metadata

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        found["cuda"] = str(torch.version.cuda)
    for module in ("kdprune", *_OPTIONAL_PACKAGES):
        if module in sys.modules:
            dist = {"nvidia.dali": "nvidia-dali-cuda130", "liger_kernel": "liger-kernel"}.get(module, module)
            try:
                found[module] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                found[module] = getattr(sys.modules[module], "__version__", "?")
    return " ".join(f"{k}={v}" for k, v in found.items())


def commit() -> str:
    """The checkout's short commit (``+dirty`` with uncommitted changes), or "" outside a git checkout."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return ""
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "..").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _sync(device: str | None) -> None:
    if device and device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 20, min_time: float = 0.0,
          device: str | None = None) -> dict:
    """Median / min / p90 wall time of ``fn()`` in milliseconds over ``repeat`` runs (after ``warmup``),
    repeating further until ``min_time`` seconds have been spent."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "min_ms": times[0],
            "p90_ms": times[int(0.9 * (len(times) - 1))], "runs": len(times)}


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns`` (floats to 4 significant digits)."""
    from kdprune.report import markdown_table

    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else v  # noqa: E731
    return markdown_table([{c: fmt(r.get(c, "")) for c in columns} for r in rows], columns)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def run_tags(name: str, config: dict | None = None) -> dict:
    """The tags every row of this run carries."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = os.environ.get("KDPRUNE_BENCH_COMMAND") or "python " + shlex.join(sys.argv)
    return {"benchmark": name, "date": date, "commit": commit(), "machine": machine(),
            "versions": versions(), "command": command,
            "config": json.dumps(config or {}, sort_keys=True, default=str)}


def append_rows(path: str, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV at ``path``; a row with columns the file lacks widens the header
    (the file is rewritten atomically, earlier rows get empty cells)."""
    from kdprune.atomic import atomic_open

    if not rows:
        return
    old_rows, columns = [], []
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            old_rows = list(reader)
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(old_rows)
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def record(name: str, rows: list[dict], *, out: str | os.PathLike | None = None, **config) -> str:
    """Append this run's ``rows`` to ``<results dir>/<name>.csv``, each tagged with :func:`run_tags`;
    ``config`` (the run's settings) goes into the ``config`` column as JSON. Returns the file's path."""
    tags = run_tags(name, config)
    path = os.path.join(results_dir(out), f"{name}.csv")
    append_rows(path, [{**tags, **{k: v for k, v in row.items() if k not in tags}} for row in rows])
    return path


def read(name: str, *, out: str | os.PathLike | None = None) -> list[dict]:
    """Every recorded row of benchmark ``name`` (strings, as stored), oldest first."""
    path = os.path.join(results_dir(out), f"{name}.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def report(name: str, rows: list[dict], columns: list[str], *, out: str | os.PathLike | None = None,
           **config) -> str:
    """Print the table of ``columns`` and append the rows with :func:`record`; returns the CSV's path."""
    print(table(rows, columns))
    path = record(name, rows, out=out, **config)
    print(f"\nappended {len(rows)} rows to {path}")
    return path
