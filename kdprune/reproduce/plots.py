"""PNG plots of a reproduction (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os

import numpy as np

from kdprune.reproduce.outputs import _cells, accs, time_rows


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        from kdprune.errors import ConfigError
        raise ConfigError("plots need matplotlib: pip install 'kdprune[plot]' (or pip install matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _stats(values):
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.nan, np.nan
    return v.mean(), (v.std(ddof=1) if v.size > 1 else 0.0)


def _series(by_key, cells_at, xs):
    m, s = zip(*(_stats(accs(by_key, cells_at(x))) for x in xs))
    return np.array(m), np.array(s)


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_plot(plt, rep, by_key, path):
    p = rep.p
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kd in zip(axes, (False, True)):
        for m in p.methods:
            mean, std = _series(by_key, lambda f, m=m: _cells(rep, m, f, rep.alpha_at(m, f) if kd else 0.0),
                                p.fractions)
            ax.errorbar(p.fractions, mean, yerr=std, marker="o", ms=4, capsize=3, label=m)
        ax.set_xscale("log")
        ax.set_xticks(p.fractions, [f"{f:g}" for f in p.fractions])
        ax.set_title("with KD" if kd else "without KD")
        ax.set_xlabel("keep fraction f")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{p.student.model} width {p.student.width}, {p.student.epochs} epochs, mean ± std over "
                 f"{len(p.seeds)} seed(s)")
    _save(plt, fig, path)


def alpha_plot(plt, rep, by_key, path):
    p = rep.p
    fig, axes = plt.subplots(1, len(p.alpha_methods), figsize=(5.5 * len(p.alpha_methods), 4.2), squeeze=False)
    for ax, m in zip(axes[0], p.alpha_methods):
        for f in p.alpha_fractions:
            mean, std = _series(by_key, lambda a, f=f, m=m: _cells(rep, m, f, a, seeds=p.alpha_seeds), p.alphas)
            ax.errorbar(p.alphas, mean, yerr=std, marker="o", ms=4, capsize=3, label=f"f={f:g}")
        ax.set_xlabel("alpha (weight of the distillation term)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{m}: accuracy against alpha")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(plt, fig, path)


def capacity_plot(plt, rep, by_key, teachers, path):
    p = rep.p
    names = [p.main_teacher.name, *(s.name for s in p.capacity_teachers)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / (len(names) + 1)
    x = np.arange(len(p.capacity_fractions))
    bars = [("no teacher", lambda f: _cells(rep, "random", f, 0.0))]
    for n in names:
        acc = teachers.get(n, {}).get("test_accuracy")
        label = f"teacher {n}" + (f" ({100 * acc:.1f}%)" if acc is not None else "")
        bars.append((label, lambda f, n=n: _cells(rep, "random", f, rep.alpha_at("random", f), teacher=n)))
    for i, (label, cells_at) in enumerate(bars):
        mean, std = _series(by_key, cells_at, p.capacity_fractions)
        ax.bar(x + i * width, mean, width, yerr=std, capsize=3, label=label)
    ax.set_xticks(x + width * len(names) / 2, [f"f={f:g}" for f in p.capacity_fractions])
    lo = np.nanmin([_stats(accs(by_key, c(f)))[0] for _, c in bars for f in p.capacity_fractions])
    if np.isfinite(lo):
        ax.set_ylim(max(0.0, lo - 5), None)
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title(f"teacher capacity (student {p.student.model} width {p.student.width})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(plt, fig, path)


def time_plot(plt, rep, by_key, target, path):
    """Test accuracy against training wall time, one line per configuration (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for row in time_rows(rep, by_key):
        curves = [by_key[c.key]["curve"] for c in row["cells"] if c.key in by_key and by_key[c.key]["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        t = np.mean([[q["train_time_s"] for q in c[:n]] for c in curves], axis=0)
        a = np.mean([[100 * q["test_accuracy"] for q in c[:n]] for c in curves], axis=0)
        label = row["config"] + ("" if row["fraction"] >= 1 else f", f={row['fraction']:g}")
        ax.plot(t, a, marker="o", ms=3, label=label, lw=2.5 if row["teacher"] is None else 1.2)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.2f}% (full data, no KD)")
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against wall time (student runs; teacher cost not included)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def write_plots(rep, by_key, teachers, target=None) -> list[str]:
    """Write the plots that the finished cells allow; returns their paths."""
    plt = _pyplot()
    p, out = rep.p, rep.out
    paths = [os.path.join(out, "accuracy_vs_fraction.png")]
    accuracy_plot(plt, rep, by_key, paths[-1])
    if p.alpha_source == "fit":
        paths.append(os.path.join(out, "alpha.png"))
        alpha_plot(plt, rep, by_key, paths[-1])
    if p.capacity_fractions and p.capacity_teachers:
        paths.append(os.path.join(out, "capacity.png"))
        capacity_plot(plt, rep, by_key, teachers, paths[-1])
    paths.append(os.path.join(out, "accuracy_vs_time.png"))
    time_plot(plt, rep, by_key, target, paths[-1])
    return paths
