"""Publishing a reproduction: the fitted alpha rule into the package, the table and plots into docs."""
from __future__ import annotations

import os
import shutil

from kdprune.errors import ConfigError

PUBLISHED = ("results.md", "results.csv", "alpha_fit.json", "summary.json", "accuracy_vs_fraction.png",
             "alpha.png", "capacity.png")


def package_alpha_fit_path() -> str:
    """Where :func:`kdprune.alpha_for_fraction` reads its coefficients: ``kdprune/loss/alpha_fit.json``."""
    import kdprune
    return os.path.join(os.path.dirname(kdprune.__file__), "loss", "alpha_fit.json")


def install_alpha_fit(out_dir: str, dest: str | None = None) -> str:
    """Copy ``out_dir/alpha_fit.json`` to ``dest`` (default: the package's); returns ``dest``."""
    src = os.path.join(out_dir, "alpha_fit.json")
    if not os.path.exists(src):
        raise ConfigError(f"{src} not found: run the alpha study first (`kdprune reproduce`)")
    dest = dest or package_alpha_fit_path()
    tmp = dest + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


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
