"""Shared benchmark harness: timing, machine description, a printed table, JSON in benchmarks/results/.

Every benchmark script measures ours against a baseline in the same run and reports ratios; nothing
here asserts a speed.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


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


def save(name: str, rows: list[dict], **extra) -> str:
    """Write ``{"machine", "rows", **extra}`` to ``benchmarks/results/<name>.json`` atomically."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"benchmark": name, "machine": machine(), "rows": rows, **extra}, f, indent=2)
    os.replace(tmp, path)
    return path


def report(name: str, rows: list[dict], columns: list[str], **extra) -> None:
    """Print the table and save the JSON."""
    print(table(rows, columns))
    print(f"\nwrote {save(name, rows, **extra)}")
