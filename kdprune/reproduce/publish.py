"""Publishing a reproduction: the tables, plots and fitted alpha rule copied to a docs folder.

The fitted alpha rule is never written into the installed package: ``alpha_fit.json`` stays in the
run's output directory, and shipping it (``kdprune/loss/alpha_fit.json``) is a commit a maintainer makes.
"""
from __future__ import annotations

import os
import shutil

from kdprune.errors import ConfigError

PUBLISHED = ("results.md", "results.csv", "alpha_fit.json", "summary.json", "accuracy_vs_fraction.png",
             "alpha.png", "capacity.png", "accuracy_vs_time.png")


def fitted_alpha_rule(out_dir: str) -> str:
    """The path of the alpha rule a reproduction fitted (``out_dir/alpha_fit.json``)."""
    path = os.path.join(out_dir, "alpha_fit.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: this reproduction fitted no alpha rule (its preset uses the "
                          "shipped rule, or the alpha sweep has not finished)")
    return path


def copy_results(out_dir: str, dest_dir: str) -> list[str]:
    """Copy the files a README shows (tables, plots, fit) from ``out_dir`` to ``dest_dir``."""
    os.makedirs(dest_dir, exist_ok=True)
    copied = []
    for name in PUBLISHED:
        src = os.path.join(out_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(dest_dir, name))
            copied.append(name)
    return copied
