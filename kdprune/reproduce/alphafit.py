"""The alpha study's answer: the best distillation weight at each keep fraction, and a rule fitted to it.

The rule is ``alpha(f) = clip(a + b * ln f, 0, 1)``: a straight line in log-fraction, the simplest
shape that can follow a weight that changes with how much data is pruned, with two numbers to store.
It is fitted by least squares to the per-fraction best alphas (the alpha with the highest test accuracy,
averaged over seeds), so a fraction between the measured ones gets an interpolated weight.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from kdprune.errors import ConfigError

FORM = "alpha = clip(a + b * ln(f), 0, 1)"


def best_alphas(rows: list[dict]) -> list[dict]:
    """Per fraction: the alpha whose mean test accuracy over seeds is highest. ``rows`` hold
    ``fraction``, ``alpha``, ``test_accuracy`` (random pruning, one row per finished run)."""
    by = {}
    for r in rows:
        by.setdefault(float(r["fraction"]), {}).setdefault(float(r["alpha"]), []).append(float(r["test_accuracy"]))
    points = []
    for f in sorted(by):
        means = {a: float(np.mean(v)) for a, v in by[f].items()}
        best = max(sorted(means), key=lambda a: means[a])  # ties: the smallest alpha
        points.append({"fraction": f, "best_alpha": best, "accuracy": means[best],
                       "accuracy_by_alpha": {f"{a:g}": means[a] for a in sorted(means)},
                       "runs": sum(len(v) for v in by[f].values())})
    return points


def fit_rule(points: list[dict]) -> dict:
    """Least-squares ``a``, ``b`` of :data:`FORM` through ``points`` (from :func:`best_alphas`);
    with a single fraction the line is flat (``b = 0``)."""
    if not points:
        raise ConfigError("no finished alpha-study runs to fit alpha_for_fraction to; run the alpha study first")
    x = np.log([p["fraction"] for p in points])
    y = np.array([p["best_alpha"] for p in points], dtype=np.float64)
    if len(points) == 1 or np.ptp(x) == 0:
        a, b = float(y.mean()), 0.0
    else:
        b, a = (float(v) for v in np.polyfit(x, y, 1))
        b = 0.0 if abs(b) < 1e-12 else b  # equal best alphas: a flat line, not -0.000
    return {"form": FORM, "a": a, "b": b, "points": points}


def rule_alpha(fit: dict, fraction: float) -> float:
    """The fitted rule evaluated at ``fraction``, rounded to 3 decimals (the precision cells are keyed by)."""
    a = fit["a"] + fit["b"] * math.log(float(fraction))
    return round(min(1.0, max(0.0, a)), 3)


def write_fit(path: str, fit: dict, source: dict) -> None:
    """Write ``fit`` (+ ``source``: preset, dataset, machine, command) as JSON, atomically."""
    from kdprune.report import write_text_atomic

    write_text_atomic(path, json.dumps({**fit, "source": source}, indent=2) + "\n")


def read_fit(path: str) -> dict | None:
    """A fit written by :func:`write_fit`, or None when ``path`` does not exist."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        fit = json.load(f)
    if fit.get("form") != FORM or not all(isinstance(fit.get(k), (int, float)) for k in ("a", "b")):
        raise ConfigError(f"{path} is not an alpha fit of the form {FORM!r}; delete it and re-run "
                          "`kdprune reproduce`")
    return fit
