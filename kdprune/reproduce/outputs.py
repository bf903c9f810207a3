"""What a person reads: ``results.csv`` (one row per finished run), ``results.md`` (mean +- std over
seeds), ``summary.json`` and the PNG plots, all regenerated from the cell files."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from kdprune.reproduce import alphafit, grid

CSV_COLUMNS = ("key", "studies", "method", "fraction", "kd", "alpha", "teacher", "seed", "test_accuracy",
               "test_loss", "kept", "samples_seen", "train_wall_time_s", "select_wall_time_s", "wall_time_s",
               "student", "device", "torch_threads", "finished_at")


def study_keys(p, fit: dict | None) -> dict[str, list]:
    """Cells of each study (as :class:`Cell` lists); the grid and capacity studies need the fit."""
    t = p.teacher.name
    out = {"alpha": grid.alpha_cells(p, t), "grid": [], "capacity": []}
    if fit is not None:
        at = lambda f: alphafit.rule_alpha(fit, f)  # noqa: E731
        out["grid"] = grid.grid_cells(p, t, at)
        if p.capacity_fractions and p.capacity_teachers:
            out["capacity"] = grid.capacity_cells(p, [t, *(s.name for s in p.capacity_teachers)], at)
    return out


def mean_std(values) -> str:
    """``"mean +- std"`` of accuracies in percent (std over seeds, ddof=1; only the mean for one seed)."""
    v = 100 * np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def _acc(by_key, cells) -> list[float]:
    return [by_key[c.key]["test_accuracy"] for c in cells if c.key in by_key]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def grid_table(p, by_key, fit) -> str:
    """Methods x {no KD, KD} rows, keep-fraction columns."""
    t = p.teacher.name
    rows = []
    for kd in (False, True):
        for m in p.methods:
            cells_at = lambda f: [grid.make_cell(m, f, alphafit.rule_alpha(fit, f) if kd else 0.0, t, s)  # noqa: E731
                                  for s in p.seeds]
            rows.append([m, "KD" if kd else "no KD"] + [mean_std(_acc(by_key, cells_at(f))) for f in p.fractions])
    header = ["method", "training"] + [f"f={f:g}" for f in p.fractions]
    return _md_table(header, rows)


def alpha_table(p, by_key) -> str:
    t = p.teacher.name
    rows = [[f"{a:g}"] + [mean_std(_acc(by_key, [grid.make_cell("random", f, a, t, s) for s in p.seeds]))
                          for f in p.fractions] for a in p.alphas]
    return _md_table(["alpha"] + [f"f={f:g}" for f in p.fractions], rows)


def _cap_alpha(p, fit, f) -> float:
    return grid.capacity_alpha(p, lambda x: alphafit.rule_alpha(fit, x), f)


def capacity_table(p, by_key, fit, teachers: dict) -> str:
    names = [p.teacher.name, *(s.name for s in p.capacity_teachers)]
    rows = []
    for name in names:
        acc = teachers.get(name, {}).get("test_accuracy")
        rows.append([name, f"{100 * acc:.2f}" if acc is not None else "-"] + [
            mean_std(_acc(by_key, [grid.make_cell("random", f, _cap_alpha(p, fit, f), name, s)
                                   for s in p.seeds])) for f in p.capacity_fractions])
    nokd = [mean_std(_acc(by_key, [grid.make_cell("random", f, 0.0, None, s) for s in p.seeds]))
            for f in p.capacity_fractions]
    rows.append(["(no teacher)", "-"] + nokd)
    return _md_table(["teacher", "teacher acc (%)"] + [f"f={f:g}" for f in p.capacity_fractions], rows)


def wall_table(p, by_key, records) -> str:
    """Mean wall time of one student run per keep fraction, without and with KD."""
    rows = []
    for kd in (False, True):
        cells = [r for r in records if bool(r["kd"]) == kd]
        rows.append(["KD" if kd else "no KD"] + [
            (f"{np.mean([r['wall_time_s'] for r in cells if r['fraction'] == f]):.1f}"
             if any(r["fraction"] == f for r in cells) else "-") for f in p.fractions])
    return _md_table(["training"] + [f"f={f:g}" for f in p.fractions], rows)


def score_times(out: str) -> dict:
    """Wall time (s) of each saved score file, from its provenance JSON."""
    d = os.path.join(out, "scores")
    if not os.path.isdir(d):
        return {}
    times = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            with open(os.path.join(d, name)) as f:
                times[name[:-5]] = json.load(f).get("wall_time_s")
    return times


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

    p, out = rep.p, rep.out
    records = rep.records()
    by_key = {r["key"]: r for r in records}
    fit = alphafit.read_fit(os.path.join(out, "alpha_fit.json"))
    studies = study_keys(p, fit)
    member = {}
    for name, cells in studies.items():
        for c in cells:
            member.setdefault(c.key, []).append(name)
    for r in records:
        r["studies"] = ";".join(dict.fromkeys(member.get(r["key"], [])))
    records.sort(key=lambda r: (r["method"], r["fraction"], r["alpha"], r["teacher"], r["seed"]))
    write_csv(os.path.join(out, "results.csv"), records)

    machine = machine_info(rep.device)
    summary = {"preset": p.as_dict(), "dataset": {"name": rep.train.name, "train": len(rep.train),
                                                  "test": len(rep.test), "fingerprint": rep.train.fingerprint},
               "teachers": rep.teachers, "scores": score_times(out), "alpha_fit": fit, "runs_finished": len(records),
               "runs_planned": len(grid.unique([c for cells in studies.values() for c in cells])),
               "student_wall_time_s": float(sum(r["wall_time_s"] for r in records)),
               "total_wall_time_s": total_wall_time_s, "machine": machine}
    write_text_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    pngs = plots.write_plots(rep, by_key, fit) if records else []
    write_text_atomic(os.path.join(out, "results.md"), report_markdown(rep, summary, by_key, fit, records, pngs))
    return summary


def report_markdown(rep, summary, by_key, fit, records, pngs) -> str:
    p = rep.p
    s, t = p.student, p.teacher
    teacher = rep.teachers.get(t.name, {})
    m = summary["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['torch_threads']} torch threads, {m['cpu_count']} CPUs"
    parts = [
        f"# kdprune reproduce --preset {p.name}",
        "",
        f"Data: {summary['dataset']['name']}, {summary['dataset']['train']:,} training samples, evaluated on "
        f"all {summary['dataset']['test']:,} test samples. Machine: {where} (torch {m['torch']}, device "
        f"{m['device']}).",
        f"Student: {s.model} width {s.width}, {s.epochs} epochs at every keep fraction (a run on f of the data "
        f"takes f of the steps), batch {p.batch_size}, SGD lr {p.lr:g} one-cycle, no augmentation. "
        f"KD temperature {p.temperature:g}.",
        f"Teacher: {t.model} width {t.width}, {t.epochs} epochs on all training samples: test accuracy "
        + (f"{100 * teacher['test_accuracy']:.2f}% ({teacher['wall_time_s']:.0f} s)." if teacher else "(not trained yet)."),
        f"Seeds: {', '.join(map(str, p.seeds))}; entries are test accuracy in %, mean ± std over seeds. "
        f"Runs finished: {summary['runs_finished']} of {summary['runs_planned']}; student wall time "
        f"{summary['student_wall_time_s'] / 60:.1f} min"
        + (f"; this invocation took {summary['total_wall_time_s'] / 60:.1f} min (a resumed reproduction counts "
           "only what it ran; teachers and scores are in summary.json)." if summary["total_wall_time_s"] else "."),
        "",
    ]
    if fit is not None:
        rule = ", ".join(f"f={f:g}: {alphafit.rule_alpha(fit, f):.2f}" for f in p.fractions)
        parts += ["## Accuracy by pruning method, without and with KD", "",
                  f"KD runs use alpha from the rule fitted by the alpha study below ({rule}).", "",
                  grid_table(p, by_key, fit), ""]
    parts += ["## Alpha study (random pruning)", "", alpha_table(p, by_key), ""]
    if fit is not None:
        best = ", ".join(f"f={q['fraction']:g}: {q['best_alpha']:g}" for q in fit["points"])
        parts += [f"Best alpha per fraction: {best}. Fitted rule: {fit['form']} with a = {fit['a']:.3f}, "
                  f"b = {fit['b']:.3f}.", ""]
        if p.capacity_fractions and p.capacity_teachers:
            cap = "the fitted alpha" if p.capacity_alpha is None else f"alpha {p.capacity_alpha:g}"
            parts += [f"## Teacher capacity (random pruning, KD at {cap})", "",
                      f"The student is {s.model} width {s.width}.", "",
                      capacity_table(p, by_key, fit, rep.teachers), ""]
    parts += ["## Wall time of one student run (s, mean over runs; every run's time is in results.csv)", "",
              wall_table(p, by_key, records), ""]
    parts += [f"![{os.path.splitext(os.path.basename(x))[0]}]({os.path.basename(x)})" for x in pngs]
    return "\n".join(parts) + "\n"
