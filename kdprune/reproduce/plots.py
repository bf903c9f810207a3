"""PNG plots of a reproduction (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os

import numpy as np

from kdprune.reproduce import alphafit, grid


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        from kdprune.errors import ConfigError
        raise ConfigError("plots need matplotlib: pip install 'kdprune[plot]' (or pip install matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _stats(by_key, cells):
    v = 100 * np.array([by_key[c.key]["test_accuracy"] for c in cells if c.key in by_key])
    if v.size == 0:
        return np.nan, np.nan
    return v.mean(), (v.std(ddof=1) if v.size > 1 else 0.0)


def _series(by_key, cells_at, xs):
    m, s = zip(*(_stats(by_key, cells_at(x)) for x in xs))
    return np.array(m), np.array(s)


def accuracy_plot(plt, p, by_key, fit, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    t = p.teacher.name
    for ax, kd in zip(axes, (False, True)):
        for m in p.methods:
            def cells_at(f, m=m):
                a = alphafit.rule_alpha(fit, f) if kd else 0.0
                return [grid.make_cell(m, f, a, t, s) for s in p.seeds]
            mean, std = _series(by_key, cells_at, p.fractions)
            ax.errorbar(p.fractions, mean, yerr=std, marker="o", ms=4, capsize=3, label=m)
        ax.set_xscale("log")
        ax.set_xticks(p.fractions, [f"{f:g}" for f in p.fractions])
        ax.set_title("with KD (alpha from the fitted rule)" if kd else "without KD")
        ax.set_xlabel("keep fraction f")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{p.student.model} width {p.student.width}, {p.student.epochs} epochs, mean ± std over "
                 f"{len(p.seeds)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def alpha_plot(plt, p, by_key, fit, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = p.teacher.name
    for f in p.fractions:
        mean, std = _series(by_key, lambda a, f=f: [grid.make_cell("random", f, a, t, s) for s in p.seeds],
                            p.alphas)
        ax1.errorbar(p.alphas, mean, yerr=std, marker="o", ms=4, capsize=3, label=f"f={f:g}")
    ax1.set_xlabel("alpha (weight of the distillation term)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("random pruning: accuracy against alpha")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    if fit is not None:
        fs = [q["fraction"] for q in fit["points"]]
        ax2.plot(fs, [q["best_alpha"] for q in fit["points"]], "o", label="best alpha (mean over seeds)")
        xs = np.geomspace(min(fs), max(fs), 100) if len(fs) > 1 else np.array(fs)
        ax2.plot(xs, [alphafit.rule_alpha(fit, x) for x in xs], "-",
                 label=f"fit: clip({fit['a']:.2f} {'-' if fit['b'] < 0 else '+'} {abs(fit['b']):.2f} ln f, 0, 1)")
        ax2.set_xscale("log")
        ax2.set_xticks(p.fractions, [f"{f:g}" for f in p.fractions])
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xlabel("keep fraction f")
    ax2.set_ylabel("alpha")
    ax2.set_title("best alpha against keep fraction")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def capacity_plot(plt, p, by_key, fit, teachers, path):
    names = [p.teacher.name, *(s.name for s in p.capacity_teachers)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / (len(names) + 1)
    x = np.arange(len(p.capacity_fractions))
    bars = [("no teacher", lambda f: [grid.make_cell("random", f, 0.0, None, s) for s in p.seeds])]
    for n in names:
        acc = teachers.get(n, {}).get("test_accuracy")
        label = f"teacher {n}" + (f" ({100 * acc:.1f}%)" if acc is not None else "")
        bars.append((label, lambda f, n=n: [grid.make_cell("random", f, grid.capacity_alpha(p, lambda x: alphafit.rule_alpha(fit, x), f), n, s)
                                            for s in p.seeds]))
    for i, (label, cells_at) in enumerate(bars):
        mean, std = _series(by_key, cells_at, p.capacity_fractions)
        ax.bar(x + i * width, mean, width, yerr=std, capsize=3, label=label)
    ax.set_xticks(x + width * len(names) / 2, [f"f={f:g}" for f in p.capacity_fractions])
    lo = np.nanmin([_stats(by_key, c(f))[0] for _, c in bars for f in p.capacity_fractions])
    if np.isfinite(lo):
        ax.set_ylim(max(0.0, lo - 5), None)
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title(f"teacher capacity (student {p.student.model} width {p.student.width})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(rep, by_key, fit) -> list[str]:
    """Write the plots that the finished cells allow; returns their paths."""
    plt = _pyplot()
    p, out, paths = rep.p, rep.out, []
    if fit is not None:
        paths.append(os.path.join(out, "accuracy_vs_fraction.png"))
        accuracy_plot(plt, p, by_key, fit, paths[-1])
    paths.append(os.path.join(out, "alpha.png"))
    alpha_plot(plt, p, by_key, fit, paths[-1])
    if fit is not None and p.capacity_fractions and p.capacity_teachers:
        paths.append(os.path.join(out, "capacity.png"))
        capacity_plot(plt, p, by_key, fit, rep.teachers, paths[-1])
    return paths
