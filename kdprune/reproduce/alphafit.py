"""The alpha sweep's answer: the best distillation weight at each keep fraction, and a rule fitted to it
per method family.

The rule is ``alpha(f) = clip(a + b * ln f, 0, 1)``: a straight line in log-fraction, the simplest
shape that can follow a weight that changes with how much data is pruned, with two numbers to store.
It is fitted by least squares to the per-fraction best alphas (the alpha with the highest test
accuracy, averaged over seeds), one fit per family (``random``: random pruning and RS2; ``hard``: the
score-based methods), and never from fewer fractions than it has coefficients. The file it is written
to has the format of the shipped ``kdprune/loss/alpha_fit.json``, so a maintainer can commit it there.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from kdprune.errors import ConfigError
from kdprune.loss.alpha import FORM, family

PARAMETERS = 2  # a and b


def best_alphas(rows: list[dict]) -> list[dict]:
    """Per fraction: the alpha whose mean test accuracy over seeds is highest. ``rows`` hold
    ``fraction``, ``alpha``, ``test_accuracy`` (one row per finished run)."""
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
    """Least-squares ``a``, ``b`` of :data:`FORM` through ``points`` (from :func:`best_alphas`); refuses
    fewer distinct fractions than the rule has coefficients."""
    fractions = {p["fraction"] for p in points}
    if len(fractions) < PARAMETERS:
        raise ConfigError(f"the alpha rule has {PARAMETERS} coefficients but the sweep measured "
                          f"{len(fractions)} fraction(s) {sorted(fractions)}; sweep at least {PARAMETERS} fractions")
    x = np.log([p["fraction"] for p in points])
    y = np.array([p["best_alpha"] for p in points], dtype=np.float64)
    b, a = (float(v) for v in np.polyfit(x, y, 1))
    b = 0.0 if abs(b) < 1e-12 else b  # equal best alphas: a flat line, not -0.000
    return {"a": a, "b": b, "points": points}


def fit_rules(rows_by_method: dict[str, list[dict]]) -> dict:
    """One rule per family from the sweep rows of each swept method (``{"random": rows, "el2n": rows}``);
    the top-level ``a``, ``b`` (the default rule) are the random family's, else the first family's."""
    rules = {}
    for method, rows in rows_by_method.items():
        rules[family(method)] = {**fit_rule(best_alphas(rows)), "fitted_on": method}
    if not rules:
        raise ConfigError("no finished alpha-sweep runs to fit alpha_for_fraction to; run the sweep first")
    default = rules.get("random") or next(iter(rules.values()))
    return {"form": FORM, "a": default["a"], "b": default["b"], "rules": rules,
            "note": "top-level a, b: the default rule, used by a method family without a rule of its own"}


def rule_alpha(fit: dict, fraction: float, method: str | None = None) -> float:
    """The fitted rule of ``method``'s family (the default rule when it has none) at ``fraction``,
    rounded to 3 decimals (the precision cells are keyed by)."""
    rule = fit.get("rules", {}).get(family(method)) or fit
    a = rule["a"] + rule["b"] * math.log(float(fraction))
    return round(min(1.0, max(0.0, a)), 3)


def shipped_alpha(fraction: float, method: str | None = None) -> float:
    """:func:`kdprune.alpha_for_fraction` (the shipped rule), rounded as :func:`rule_alpha` rounds."""
    from kdprune.loss.alpha import alpha_for_fraction
    return round(alpha_for_fraction(fraction, method), 3)


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
    rules = [fit, *fit.get("rules", {}).values()]
    if fit.get("form") != FORM or not all(isinstance(r.get(k), (int, float)) for r in rules for k in ("a", "b")):
        raise ConfigError(f"{path} is not an alpha fit of the form {FORM!r}; delete it and re-run "
                          "`kdprune reproduce`")
    return fit
