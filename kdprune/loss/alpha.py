"""``alpha_for_fraction``: the distillation weight to use when training on a kept fraction of the data.

Form: ``alpha(f) = clip(a + b * ln(f), 0, 1)``, the form ``kdprune/reproduce/alphafit.py`` fits; with
``b <= 0`` alpha grows as the kept fraction shrinks (less data: lean more on the teacher).

The coefficients come from ``kdprune/loss/alpha_fit.json`` when that file exists (written by
``kdprune reproduce --write-alpha-fit``, the fit of our own alpha sweep, see
``kdprune/reproduce/alphafit.py``); otherwise from :data:`PROVISIONAL` below, which are NOT fitted:
they are a placeholder shape (alpha 0.5 on the full data, 0.85 at 10%, 1 below about 3.5%) until the
sweep fits them.
"""
from __future__ import annotations

import functools
import json
import math
import os

from kdprune.errors import ConfigError

FORM = "alpha = clip(a + b * ln(f), 0, 1)"

# --- Provisional coefficients: the one place to change by hand. Not fitted; replaced by the sweep. ---
PROVISIONAL = {"a": 0.5, "b": -0.15}

FIT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alpha_fit.json")


@functools.lru_cache(maxsize=None)
def _coefficients(path: str, mtime: float) -> tuple[float, float, str]:
    if mtime < 0:
        return PROVISIONAL["a"], PROVISIONAL["b"], "provisional"
    with open(path) as f:
        fit = json.load(f)
    a, b = fit.get("a"), fit.get("b")
    if fit.get("form") != FORM or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        raise ConfigError(f"{path} is not an alpha fit of the form {FORM!r}; delete it (or re-run "
                          "`kdprune reproduce`) to fall back to the provisional coefficients")
    return float(a), float(b), path


def coefficients() -> tuple[float, float, str]:
    """``(a, b, source)``: the fitted coefficients when ``alpha_fit.json`` exists, else the provisional ones."""
    mtime = os.path.getmtime(FIT_PATH) if os.path.exists(FIT_PATH) else -1.0
    return _coefficients(FIT_PATH, mtime)


def alpha_for_fraction(keep_fraction: float) -> float:
    """The KD weight alpha in [0, 1] for training on ``keep_fraction`` (in (0, 1]) of the dataset:
    ``clip(a + b * ln(keep_fraction), 0, 1)`` (non-increasing in ``keep_fraction`` when b <= 0, as the
    provisional coefficients are).

    The coefficients are provisional until the alpha sweep (issue 8) fits them; see the module docstring.
    """
    f = float(keep_fraction)
    if not 0.0 < f <= 1.0:
        raise ConfigError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    a, b, _ = coefficients()
    return min(1.0, max(0.0, a + b * math.log(f)))


def resolve_alpha(alpha, keep_fraction=None, who: str = "kd_loss") -> float:
    """A number in ``alpha``, or ``alpha_for_fraction(keep_fraction)`` for ``alpha="auto"``; ``who``
    names the caller in the error."""
    if isinstance(alpha, str):
        if alpha != "auto":
            raise ConfigError(f"{who}: alpha must be a number in [0, 1] or 'auto', got {alpha!r}")
        if keep_fraction is None:
            raise ConfigError(f"{who}: alpha='auto' needs fraction= (the fraction of the dataset kept)")
        return alpha_for_fraction(keep_fraction)
    return float(alpha)
