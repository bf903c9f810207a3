"""``alpha_for_fraction``: the distillation weight to use when training on a kept fraction of the data.

Form: ``alpha(f) = clip(a + b * ln(f), 0, 1)``, the form ``kdprune/reproduce/alphafit.py`` fits; with
``b <= 0`` alpha grows as the kept fraction shrinks (less data: lean more on the teacher).

The coefficients are data shipped with the package, ``kdprune/loss/alpha_fit.json``: the fit of an
alpha sweep of ``kdprune reproduce``, changed only by a commit (``kdprune reproduce --write-alpha-fit``
writes a new fit next to the run's results, and a maintainer copies it here). It holds one rule per
method family that the sweep measured:

- ``random``: random pruning, RS2 and the full data;
- ``hard``: the score-based methods that keep the hardest samples (EL2N, GraNd, forgetting, AUM/CCS,
  the teacher scores, prototypes).

A family the file has no rule for uses the file's default rule (``a``, ``b`` at the top level), and
:func:`coefficients` says which rule answered.
"""
from __future__ import annotations

import functools
import json
import math
import os

from kdprune.errors import ConfigError

FORM = "alpha = clip(a + b * ln(f), 0, 1)"
FIT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alpha_fit.json")
FAMILIES = ("random", "hard")
RANDOM_METHODS = ("random", "rs2", "full")


def family(method: str | None) -> str | None:
    """The alpha family of a pruning method (None: no method given, the default rule)."""
    if method is None:
        return None
    return "random" if str(method) in RANDOM_METHODS else "hard"


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict:
    try:
        with open(path) as f:
            fit = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the shipped alpha rule {path} ({err}); reinstall kdprune") from err
    rules = {"default": fit, **fit.get("rules", {})}
    for name, rule in rules.items():
        if fit.get("form") != FORM or not all(isinstance(rule.get(k), (int, float)) for k in ("a", "b")):
            raise ConfigError(f"{path}: rule {name!r} is not an alpha fit of the form {FORM!r}; "
                              "restore the file from the kdprune release")
    return fit


def coefficients(method: str | None = None) -> tuple[float, float, str]:
    """``(a, b, rule)`` of ``method``'s family: ``rule`` names the rule of the shipped file that
    answered (``"random"``, ``"hard"`` or ``"default"``)."""
    fit = _load(FIT_PATH)
    fam = family(method)
    rule = fit.get("rules", {}).get(fam) if fam else None
    if rule is None:
        return float(fit["a"]), float(fit["b"]), "default"
    return float(rule["a"]), float(rule["b"]), fam


def alpha_for_fraction(keep_fraction: float, method: str | None = None) -> float:
    """The KD weight alpha in [0, 1] for training on ``keep_fraction`` (in (0, 1]) of the dataset,
    chosen by ``method`` (a pruning method name such as ``"random"``, ``"rs2"``, ``"el2n"``; None: the
    default rule): ``clip(a + b * ln(keep_fraction), 0, 1)`` with the family's shipped coefficients.

    >>> import kdprune
    >>> [round(kdprune.alpha_for_fraction(f, "el2n"), 2) for f in (0.5, 0.3, 0.1)]  # hard samples: more KD at small f
    [0.0, 0.29, 0.9]
    >>> kdprune.alpha_for_fraction(0.1, "random") == kdprune.alpha_for_fraction(0.5, "random")  # flat for random
    True
    """
    f = float(keep_fraction)
    if not 0.0 < f <= 1.0:
        raise ConfigError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    a, b, _ = coefficients(method)
    return min(1.0, max(0.0, a + b * math.log(f)))


def resolve_alpha(alpha, keep_fraction=None, who: str = "kd_loss", method: str | None = None) -> float:
    """A number in ``alpha``, or ``alpha_for_fraction(keep_fraction, method)`` for ``alpha="auto"``;
    ``who`` names the caller in the error."""
    if isinstance(alpha, str):
        if alpha != "auto":
            raise ConfigError(f"{who}: alpha must be a number in [0, 1] or 'auto', got {alpha!r}")
        if keep_fraction is None:
            raise ConfigError(f"{who}: alpha='auto' needs fraction= (the fraction of the dataset kept)")
        return alpha_for_fraction(keep_fraction, method)
    return float(alpha)
