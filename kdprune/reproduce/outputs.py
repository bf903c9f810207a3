"""What a person reads: ``results.csv`` (one row per finished run), ``results.md`` (tables of mean ± std
over seeds, the time-to-accuracy table and each of the paper's claims checked against the numbers),
``summary.json`` and the PNG plots, all regenerated from the cell files."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from kdprune.reproduce import grid
from kdprune.reproduce.grid import FULL, RS2

CSV_COLUMNS = ("key", "studies", "method", "fraction", "kd", "alpha", "teacher", "online", "epochs", "seed",
               "test_accuracy", "test_loss", "kept", "samples_seen", "steps", "train_wall_time_s",
               "eval_wall_time_s", "select_wall_time_s", "wall_time_s", "student", "device", "torch_threads",
               "finished_at")
NOISE = 2.0  # a difference is "within noise" when it is at most this many standard errors


# ---- numbers ----------------------------------------------------------------------------------

def accs(by_key, cells) -> list[float]:
    """Test accuracies (in %) of the finished ``cells``."""
    return [100 * by_key[c.key]["test_accuracy"] for c in cells if c.key in by_key]


def mean_std(values) -> str:
    """``"mean ± std"`` of accuracies in percent (std over seeds, ddof=1; only the mean for one value;
    ``-`` for none)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def compare(a, b) -> tuple[float, str]:
    """``(mean(a) - mean(b), verdict)``: ``"within noise"`` when the difference is at most
    :data:`NOISE` standard errors of the difference (Welch), ``"higher"``/``"lower"`` beyond it,
    ``"noise unknown"`` with fewer than two values on a side."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan, "not measured"
    d = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return d, "noise unknown (one seed)"
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    if abs(d) <= NOISE * se:
        return d, "within noise"
    return d, "higher" if d > 0 else "lower"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (:func:`kdprune.report.markdown_table`) of rows given as lists; a row whose
    length is not the header's is an error, and a ``|`` inside a cell is written as ``/``."""
    from kdprune.report import markdown_table

    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"table row {r} has {len(r)} cells, the header {len(header)}")
    header = [str(h).replace("|", "/") for h in header]
    return markdown_table([{h: str(x).replace("|", "/").replace("\n", " ") for h, x in zip(header, r)} for r in rows],
                          header)


# ---- the tables -------------------------------------------------------------------------------

def _cells(rep, method, f, alpha, *, teacher=None, epochs=None, online=False, seeds=None):
    p = rep.p
    return [grid.make_cell(method, f, alpha, teacher or p.main_teacher.name, s, epochs or p.student.epochs, online)
            for s in (seeds or p.seeds)]


def grid_table(rep, by_key) -> str:
    """Methods x {no KD, KD} rows, keep-fraction columns; a KD entry whose rule gives alpha 0 says so."""
    p, rows = rep.p, []
    for m in p.methods:
        for kd in (False, True):
            row = [m, "KD" if kd else "no KD"]
            for f in p.fractions:
                a = rep.alpha_at(m, f) if kd else 0.0
                row.append("alpha 0: no KD run" if kd and a == 0 else mean_std(accs(by_key, _cells(rep, m, f, a))))
            rows.append(row)
    return md_table(["method", "training"] + [f"f={f:g}" for f in p.fractions], rows)


def alpha_used_table(rep) -> str:
    p = rep.p
    rows = [[m] + [f"{rep.alpha_at(m, f):.3f}" for f in p.fractions] for m in p.methods]
    return md_table(["method"] + [f"f={f:g}" for f in p.fractions], rows)


def gain_table(rep, by_key) -> str:
    """KD minus no KD, in points, with the noise verdict."""
    p, rows = rep.p, []
    for m in p.methods:
        row = [m]
        for f in p.fractions:
            a = rep.alpha_at(m, f)
            if a == 0:
                row.append("-")
                continue
            d, verdict = compare(accs(by_key, _cells(rep, m, f, a)), accs(by_key, _cells(rep, m, f, 0.0)))
            row.append("-" if math.isnan(d) else f"{d:+.2f} ({verdict})")
        rows.append(row)
    return md_table(["method"] + [f"f={f:g}" for f in p.fractions], rows)


def alpha_sweep_table(rep, by_key) -> str:
    p, rows = rep.p, []
    for m in p.alpha_methods:
        for a in p.alphas:
            rows.append([m, f"{a:g}"] + [mean_std(accs(by_key, _cells(rep, m, f, a, seeds=p.alpha_seeds)))
                                         for f in p.alpha_fractions])
    return md_table(["method", "alpha"] + [f"f={f:g}" for f in p.alpha_fractions], rows)


def capacity_table(rep, by_key, teachers: dict) -> str:
    p = rep.p
    names = [p.main_teacher.name, *(s.name for s in p.capacity_teachers)]
    rows = []
    for name in names:
        acc = teachers.get(name, {}).get("test_accuracy")
        role = "main (self-distillation)" if name == p.main_teacher.name else "capacity"
        rows.append([name, role, f"{100 * acc:.2f}" if acc is not None else "-"] + [
            mean_std(accs(by_key, _cells(rep, "random", f, rep.alpha_at("random", f), teacher=name)))
            if rep.alpha_at("random", f) > 0 else "alpha 0: no KD run" for f in p.capacity_fractions])
    rows.append(["(no teacher)", "-", "-"] + [mean_std(accs(by_key, _cells(rep, "random", f, 0.0)))
                                              for f in p.capacity_fractions])
    return md_table(["teacher", "role", "teacher acc (%)"] + [f"f={f:g}" for f in p.capacity_fractions], rows)


def control_table(rep, by_key) -> str:
    p = rep.p
    f, e = min(p.fractions), p.student.epochs
    e_steps = max(1, round(e / f))
    a = rep.alpha_at("random", f)
    rows = []
    for label, epochs in ((f"{e} epochs (f of the steps)", e), (f"{e_steps} epochs (the full run's steps)", e_steps)):
        seeds = p.control_seeds
        kd = (mean_std(accs(by_key, _cells(rep, "random", f, a, epochs=epochs, seeds=seeds))) if a > 0
              else "alpha 0: no KD run")
        rows.append([label, mean_std(accs(by_key, _cells(rep, "random", f, 0.0, epochs=epochs, seeds=seeds))), kd])
    rows.append([f"full data, {e} epochs", mean_std(accs(by_key, _cells(rep, FULL, 1.0, 0.0))), "-"])
    return md_table([f"random f={f:g}", "no KD", f"KD (alpha {a:.3f})"], rows)


def convergence_table(rep, by_key) -> str:
    p = rep.p
    rows = []
    for e in sorted({p.student.epochs, *p.convergence_epochs}):
        seeds = p.seeds if e == p.student.epochs else p.seeds[:1]
        rows.append([str(e), mean_std(accs(by_key, _cells(rep, FULL, 1.0, 0.0, epochs=e, seeds=seeds))),
                     str(len(seeds))])
    return md_table(["epochs", "full data, no KD: test acc (%)", "seeds"], rows)


def score_costs(out: str) -> dict:
    """Per saved score file: wall time, epochs and runs, from its provenance JSON."""
    d = os.path.join(out, "scores")
    if not os.path.isdir(d):
        return {}
    costs = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            with open(os.path.join(d, name)) as f:
                meta = json.load(f)
            costs[name[:-5]] = {"wall_time_s": meta.get("wall_time_s"), "epochs": meta.get("epochs"),
                                "runs": len(meta.get("seeds", [])) or None}
    return costs


def score_table(costs: dict) -> str:
    rows = [[n, "-" if c["epochs"] is None else str(c["epochs"]), "-" if c["runs"] is None else str(c["runs"]),
             f"{c['wall_time_s']:.1f}" if c["wall_time_s"] is not None else "-"] for n, c in costs.items()]
    return md_table(["score", "epochs per run", "runs averaged", "wall time (s)"], rows)


def teacher_table(teachers: dict) -> str:
    rows = [[n, f"{100 * t['test_accuracy']:.2f}", f"{t['train_s']:.1f}", f"{t['logits_s']:.1f}"]
            for n, t in teachers.items()]
    return md_table(["teacher", "test acc (%)", "training (s)", "logits to the store (s)"], rows)


# ---- time to accuracy -------------------------------------------------------------------------

def time_rows(rep, by_key) -> list[dict]:
    """The time-to-accuracy configurations: full data without KD, and at each pruned fraction random + KD
    from the store, random + KD with an online teacher, RS2 + KD; each with its cells."""
    p = rep.p
    rows = [{"config": "full data, no KD", "fraction": 1.0, "cells": _cells(rep, FULL, 1.0, 0.0), "teacher": None}]
    for f in p.fractions:
        if f >= 1.0:
            continue
        a = rep.alpha_at("random", f)
        if a == 0:
            continue
        rows.append({"config": "random + KD (store)", "fraction": f, "cells": _cells(rep, "random", f, a),
                     "teacher": "store"})
        if p.online_teacher:
            rows.append({"config": "random + KD (online teacher)", "fraction": f,
                         "cells": _cells(rep, "random", f, a, online=True), "teacher": "online"})
        if RS2 in p.methods:
            a2 = rep.alpha_at(RS2, f)
            if a2 > 0:
                rows.append({"config": "RS2 + KD (store)", "fraction": f, "cells": _cells(rep, RS2, f, a2),
                             "teacher": "store"})
    return rows


def time_to(curve: list[dict], target: float) -> float | None:
    """Training time at the first evaluated epoch whose accuracy reaches ``target`` (None: never)."""
    for point in curve:
        if 100 * point["test_accuracy"] >= target - 1e-9:
            return point["train_time_s"]
    return None


def time_table(rep, by_key, teachers: dict) -> tuple[str, float | None, list[dict]]:
    """The table, the full-data no-KD accuracy (%) its targets are shares of, and the per-row numbers.

    A target is a share (``rep.p.time_targets``, e.g. 98% and 99%) of the full-data no-KD accuracy,
    not the accuracy itself: a target equal to the mean is missed by every full-data seed below the
    mean, and a pruned run that ends a few tenths under it would show no time at all."""
    p = rep.p
    full_accs = accs(by_key, _cells(rep, FULL, 1.0, 0.0))
    if not full_accs:
        return "", None, []  # the full-data runs have not finished yet
    full = float(np.mean(full_accs))
    t = teachers.get(p.main_teacher.name)
    one_off = {None: 0.0, "store": (t["train_s"] + t["logits_s"]) if t else math.nan,
               "online": t["train_s"] if t else math.nan}
    rows, stats = [], []
    for row in time_rows(rep, by_key):
        recs = [by_key[c.key] for c in row["cells"] if c.key in by_key]
        if not recs:
            continue
        c = one_off[row["teacher"]]
        reach = {}
        for share in p.time_targets:
            times = [time_to(r["curve"], share * full) for r in recs]
            reached = [x for x in times if x is not None]
            reach[share] = (float(np.mean(reached)) if len(reached) == len(recs) else None, len(recs) - len(reached))
        run_s = float(np.mean([r["train_wall_time_s"] for r in recs]))
        stats.append({**{k: v for k, v in row.items() if k != "cells"}, "run_s": run_s, "one_off_s": c,
                      "time_to_s": {f"{share:g}": reach[share][0] for share in p.time_targets}})
        cells = [row["config"], f"{row['fraction']:g}", mean_std([100 * r["test_accuracy"] for r in recs]),
                 f"{run_s:.1f}"]
        cells += [f"{x:.1f}" if x is not None else f"not reached ({missed} of {len(recs)})"
                  for x, missed in reach.values()]
        cells.append(f"{c:.1f}")
        cells += [f"{x + c / p.amortise_runs:.1f}" if x is not None else "-" for x, _ in reach.values()]
        rows.append(cells)
    pct = [f"{100 * share:g}%" for share in p.time_targets]
    header = (["configuration", "f", "final test acc (%)", "whole run (s)"] + [f"to {x} (s)" for x in pct]
              + ["teacher one-off (s)"] + [f"to {x} + one-off / {p.amortise_runs} (s)" for x in pct])
    return md_table(header, rows), full, stats


def wall_table(rep, records) -> str:
    """Mean training wall time of one student run per keep fraction and kind of run."""
    p = rep.p
    kinds = [("no KD", lambda r: not r["kd"] and r["method"] != RS2),
             ("KD, store", lambda r: r["kd"] and not r["online"] and r["method"] != RS2),
             ("KD, online teacher", lambda r: r["kd"] and r["online"]),
             ("RS2 + KD, store", lambda r: r["kd"] and r["method"] == RS2)]
    rows = []
    for label, keep in kinds:
        sel = [r for r in records if keep(r) and r["epochs"] == p.student.epochs]
        rows.append([label] + [(f"{np.mean([r['train_wall_time_s'] for r in sel if r['fraction'] == f]):.1f}"
                                if any(r["fraction"] == f for r in sel) else "-") for f in p.fractions])
    return md_table(["run"] + [f"f={f:g}" for f in p.fractions], rows)


# ---- the paper's claims -----------------------------------------------------------------------

def _verdict(d: float, verdict: str, good: str) -> str:
    """'agrees' when the difference goes the claimed way beyond noise (``good`` is 'higher' or 'lower')."""
    if verdict.startswith("not measured"):
        return "not measured"
    if verdict == "within noise":
        return "does not agree: the difference is within noise"
    if verdict.startswith("noise unknown"):
        return ("agrees" if (d > 0) == (good == "higher") else "does not agree") + " (one seed: noise unknown)"
    return "agrees" if verdict == good else "does not agree"


def claims(rep, by_key, teachers: dict, time_stats: list[dict]) -> list[str]:
    """Each of the paper's claims with the numbers of this run and whether they agree."""
    p, out = rep.p, []
    f0 = min(p.fractions)
    a = rep.alpha_at("random", f0)
    kd, nokd = accs(by_key, _cells(rep, "random", f0, a)), accs(by_key, _cells(rep, "random", f0, 0.0))
    if a == 0:
        out.append(f"1. KD improves training on a pruned subset: not measured (the alpha rule gives 0 at f={f0:g}).")
    else:
        d, v = compare(kd, nokd)
        out.append(f"1. KD improves training on a pruned subset (random pruning, f={f0:g}): KD {mean_std(kd)} vs "
                   f"no KD {mean_std(nokd)} ({d:+.2f} points, {v}): {_verdict(d, v, 'higher')}.")
    others = [m for m in p.methods if m not in ("random", RS2)]
    if others and a > 0:
        parts = []
        for m in others:
            dm, vm = compare(kd, accs(by_key, _cells(rep, m, f0, rep.alpha_at(m, f0))))
            parts.append(f"{m} {dm:+.2f} ({vm})")
        worse = sum(1 for x in parts if "(lower)" in x)
        out.append(f"2. With KD, random pruning is as good as the score-based methods at small f (f={f0:g}, random "
                   f"minus each): {', '.join(parts)}: "
                   + ("agrees" if worse == 0 else f"does not agree for {worse} of {len(others)} methods") + ".")
    fit = rep.fit
    if fit is not None:
        for fam, rule in fit.get("rules", {}).items():
            pts = rule["points"]
            lo, hi = pts[0], pts[-1]
            trend = ("agrees" if lo["best_alpha"] > hi["best_alpha"] else
                     "does not agree (equal)" if lo["best_alpha"] == hi["best_alpha"] else "does not agree")
            out.append(f"3. The best alpha grows as f shrinks ({fam} family, swept on {rule['fitted_on']}): best "
                       f"alpha {lo['best_alpha']:g} at f={lo['fraction']:g} vs {hi['best_alpha']:g} at "
                       f"f={hi['fraction']:g}: {trend}.")
        rules = fit.get("rules", {})
        if {"random", "hard"} <= set(rules):
            ar, ah = rep.alpha_at("random", f0), rep.alpha_at("el2n", f0)
            out.append(f"4. Hard-sample methods want a higher alpha than random pruning at small f: fitted alpha at "
                       f"f={f0:g} {ah:.3f} (hard) vs {ar:.3f} (random): "
                       + ("agrees" if ah > ar else "does not agree") + ".")
    if p.capacity_teachers and p.capacity_fractions:
        fc = min(p.capacity_fractions)
        main = accs(by_key, _cells(rep, "random", fc, rep.alpha_at("random", fc)))
        big = max(p.capacity_teachers, key=lambda s: s.width)
        if big.width > p.main_teacher.width:
            large = accs(by_key, _cells(rep, "random", fc, rep.alpha_at("random", fc), teacher=big.name))
            d, v = compare(large, main)
            acc = teachers.get(big.name, {}).get("test_accuracy")
            out.append(f"5. At small f a larger, more accurate teacher does not give a better student (f={fc:g}): "
                       f"teacher {big.name}" + (f" ({100 * acc:.2f}%)" if acc else "") + f" gives {mean_std(large)} vs "
                       f"{mean_std(main)} from the self-distillation teacher ({d:+.2f}, {v}): "
                       + ("agrees" if v in ("within noise", "lower") else "does not agree") + ".")
    full = next((s for s in time_stats if s["teacher"] is None), None)
    for share in sorted(p.time_targets, reverse=True):  # the highest share some pruned KD run reaches
        level = f"{share:g}"
        store = [s for s in time_stats if s["config"] == "random + KD (store)" and s["time_to_s"][level] is not None]
        if full is None or full["time_to_s"][level] is None or not store:
            continue
        best = min(store, key=lambda s: s["time_to_s"][level])
        mine, theirs = best["time_to_s"][level], full["time_to_s"][level]
        shared = mine + best["one_off_s"] / p.amortise_runs
        out.append(f"6. Random pruning + KD reaches {100 * share:g}% of the full-data accuracy in less wall time: "
                   f"f={best['fraction']:g} takes {mine:.1f} s against {theirs:.1f} s on all the data (student run "
                   "only: " + ("agrees" if mine < theirs else "does not agree") + f"); {shared:.1f} s with the "
                   f"teacher's one-off cost shared by {p.amortise_runs} runs ("
                   + ("agrees" if shared < theirs else "does not agree") + f"), {mine + best['one_off_s']:.1f} s "
                   "with it paid by this run alone ("
                   + ("agrees" if mine + best["one_off_s"] < theirs else "does not agree") + ").")
        break
    else:
        if full is not None:
            out.append("6. Random pruning + KD reaches the full-data accuracy in less wall time: no pruned KD run "
                       f"reached {100 * min(p.time_targets):g}% of it in every seed: does not agree.")
    return out


# ---- writing ----------------------------------------------------------------------------------

def write_csv(path: str, rows: list[dict]) -> None:
    from kdprune.report import write_text_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_outputs(rep, total_wall_time_s: float | None = None) -> dict:
    """Regenerate every output of the reproduction ``rep`` (a :class:`~kdprune.reproduce.runner.Reproduction`)
    from its finished cells; returns the summary."""
    from kdprune.report import write_text_atomic
    from kdprune.reproduce import plots
    from kdprune.reproduce.runner import machine_info

    rep.load_fit()
    p, out = rep.p, rep.out
    records = rep.records()
    by_key = {r["key"]: r for r in records}
    studies = rep.study_cells()
    member = {}
    for name, cells in studies.items():
        for c in cells:
            member.setdefault(c.key, []).append(name)
    for r in records:
        r["studies"] = ";".join(dict.fromkeys(member.get(r["key"], [])))
    records.sort(key=lambda r: (r["method"], r["fraction"], r["alpha"], r["teacher"], r["epochs"], r["seed"]))
    write_csv(os.path.join(out, "results.csv"), records)

    teachers = {n: t for n, s in rep.teachers().items() if (t := rep.teacher_info(s)) is not None}
    time_md, target, time_stats = time_table(rep, by_key, teachers) if "grid" in studies else ("", None, [])
    summary = {"preset": p.as_dict(), "dataset": {"name": rep.train.name, "train": len(rep.train),
                                                  "test": len(rep.test), "fingerprint": rep.train.fingerprint},
               "teachers": teachers, "scores": score_costs(out), "alpha_fit": rep.fit,
               "alpha_source": p.alpha_source, "runs_finished": len(records),
               "runs_planned": len(grid.unique([c for cells in studies.values() for c in cells])),
               "student_wall_time_s": float(sum(r["wall_time_s"] for r in records)),
               "target_accuracy": target, "time_to_accuracy": time_stats,
               "total_wall_time_s": total_wall_time_s, "machine": machine_info(rep.device)}
    write_text_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    pngs = plots.write_plots(rep, by_key, teachers, target) if records and "grid" in studies else []
    md = report_markdown(rep, summary, by_key, records, pngs, time_md) if "grid" in studies else \
        f"# kdprune reproduce --preset {p.name}\n\nThe alpha sweep is running; the tables follow when it ends.\n"
    write_text_atomic(os.path.join(out, "results.md"), md)
    return summary


def report_markdown(rep, summary, by_key, records, pngs, time_md) -> str:
    p = rep.p
    s, t = p.student, p.main_teacher
    teachers = summary["teachers"]
    m = summary["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['cpu_count']} CPUs, torch threads per run: {m['torch_threads']}"
    alpha_src = ("the rule fitted by this run's alpha sweep (below)" if p.alpha_source == "fit" else
                 "the rule shipped with kdprune (kdprune/loss/alpha_fit.json)")
    parts = [
        f"# kdprune reproduce --preset {p.name}",
        "",
        f"Data: {summary['dataset']['name']}, {summary['dataset']['train']:,} training samples, evaluated on all "
        f"{summary['dataset']['test']:,} test samples. Machine: {where} (torch {m['torch']}, device {m['device']}).",
        "",
        f"Student: {s.model} width {s.width}, {s.epochs} epochs at every keep fraction f (a run on f of the data "
        f"takes f of the steps), batch {p.batch_size}, SGD lr {p.lr:g} one-cycle, no augmentation. KD temperature "
        f"{p.temperature:g}; alpha from {alpha_src}. Main teacher: the student's own architecture trained "
        f"{t.epochs} epochs on all the data (self-distillation).",
        "",
        f"Seeds: {', '.join(map(str, p.seeds))}; entries are test accuracy in %, mean ± std over seeds. A difference "
        f"is called within noise when it is at most {NOISE:g} standard errors of the difference. Scores are "
        "computed once per reproduction (averaged over their own runs), so the seeds vary the subset of random "
        f"pruning, the student's initialisation and its data order. Runs finished: {summary['runs_finished']} of "
        f"{summary['runs_planned']}; student training time {summary['student_wall_time_s'] / 60:.1f} min"
        + (f"; this invocation {summary['total_wall_time_s'] / 60:.1f} min." if summary["total_wall_time_s"] else "."),
        "",
    ]
    lines = claims(rep, by_key, teachers, summary["time_to_accuracy"])
    if lines:
        parts += ["## The paper's claims against these numbers", "", *lines, ""]
    parts += ["## Accuracy by pruning method, without and with KD", "", grid_table(rep, by_key), "",
              "Alpha of the KD runs:", "", alpha_used_table(rep), "",
              "KD minus no KD (points), with the noise verdict:", "", gain_table(rep, by_key), ""]
    if p.alpha_source == "fit":
        parts += ["## Alpha sweep", "", alpha_sweep_table(rep, by_key), ""]
        if rep.fit is not None:
            for fam, rule in rep.fit["rules"].items():
                best = ", ".join(f"f={q['fraction']:g}: {q['best_alpha']:g}" for q in rule["points"])
                parts += [f"Family {fam} (swept on {rule['fitted_on']}): best alpha {best}; fitted "
                          f"{rep.fit['form']} with a = {rule['a']:.3f}, b = {rule['b']:.3f}.", ""]
    if time_md:
        levels = ", ".join(f"{100 * x:g}% ({x * summary['target_accuracy']:.2f}%)" for x in p.time_targets)
        parts += ["## Time to accuracy", "",
                  f"Targets: {levels} of the full-data no-KD accuracy, {summary['target_accuracy']:.2f}% (mean over "
                  "seeds). Time to a target: the training time (evaluation excluded) at the end of the first epoch "
                  "whose test accuracy reaches it, mean over seeds (only when every seed reaches it; otherwise how "
                  "many did not). The teacher's one-off cost (its training, plus writing its logits for the store; "
                  f"the online teacher's training alone) is added shared by {p.amortise_runs} runs that reuse the "
                  "same teacher, as a sweep or repeated training would.", "", time_md, ""]
    if p.capacity_teachers and p.capacity_fractions:
        parts += ["## Teacher capacity (random pruning, KD)", "", capacity_table(rep, by_key, teachers), ""]
    if p.fixed_steps_control:
        parts += ["## Fixed-steps control", "", control_table(rep, by_key), ""]
    if p.convergence_epochs:
        parts += ["## Convergence of the full-data student", "", convergence_table(rep, by_key), ""]
    if teachers:
        parts += ["## Teachers", "", teacher_table(teachers), ""]
    costs = summary["scores"]
    if costs:
        parts += ["## Cost of the scores", "", score_table(costs), ""]
    parts += ["## Training wall time of one student run (s, mean over runs; every run is in results.csv)", "",
              wall_table(rep, records), ""]
    parts += [f"![{os.path.splitext(os.path.basename(x))[0]}]({os.path.basename(x)})" for x in pngs]
    return "\n".join(parts) + "\n"
