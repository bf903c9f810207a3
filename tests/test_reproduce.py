"""`kdprune reproduce`: the presets and their cells, the alpha fit per method family, the shipped rule, the
Markdown tables' shape, the estimate, and two small reproductions end to end (synthetic 12x12 data).

``tiny`` touches every study but the alpha sweep (teachers for self-distillation and capacity, every
score, RS2, KD from the store and online, the fixed-steps control, convergence, time to accuracy, every
plot) with the shipped alpha rule; ``sweep`` runs the alpha sweep and the grid after it in two worker
processes. Each is trained once per module and the other tests reuse it.
"""
import csv
import json
import os
import re

import numpy as np
import pytest

from kdprune.cli import main
from kdprune.errors import ConfigError
from kdprune.loss import alpha as shipped
from kdprune.reproduce import PRESETS, Reproduction, estimate, reproduce
from kdprune.reproduce import alphafit, grid
from kdprune.reproduce.estimate import work
from kdprune.reproduce.outputs import compare, md_table, mean_std
from kdprune.reproduce.publish import copy_results, fitted_alpha_rule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def table_problems(md: str) -> list[str]:
    """Every Markdown table in ``md`` must be a header row, a separator row and rows of the header's width."""
    problems, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            width = block[0].count("|") - 1
            if len(block) < 2 or not SEPARATOR.match(block[1]):
                problems.append(f"table without a header separator: {block[0]!r}")
            problems += [f"row {r!r} has {r.count('|') - 1} cells, header {width}" for r in block
                         if r.count("|") - 1 != width]
            block = []
    return problems


# ---- presets and cells ------------------------------------------------------------------------

def test_cells_are_shared_where_runs_are_equal():
    cell = grid.make_cell
    assert cell("el2n", 1.0, 0.0, None, 0, 8).key == cell("random", 1.0, 0.0, None, 0, 8).key
    assert cell("random", 0.1, 0.0, "t1", 0, 8).key == cell("random", 0.1, 0.0, None, 0, 8).key
    keys = {cell(*a).key for a in [("random", 0.1, 0.5, "t1", 0, 8), ("random", 0.1, 0.5, "t2", 0, 8),
                                   ("random", 0.1, 0.25, "t1", 0, 8), ("random", 0.1, 0.5, "t1", 1, 8),
                                   ("el2n", 0.1, 0.5, "t1", 0, 8), ("random", 0.1, 0.5, "t1", 0, 80),
                                   ("random", 0.1, 0.5, "t1", 0, 8, True)]}
    assert len(keys) == 7
    assert not cell("random", 0.1, 0.0, "t1", 0, 8, online=True).online  # no teacher, nothing online


def test_full_preset_is_the_study():
    p = PRESETS["full"].validate()
    assert p.fractions == (0.1, 0.3, 0.5, 1.0)
    assert set(p.methods) == {"random", "el2n", "grand", "forgetting", "ccs", "teacher-el2n", "rs2"}
    assert len(p.seeds) >= 3 and p.alpha_source == "fit"
    assert p.main_teacher == p.student  # self-distillation
    widths = [s.width for s in p.capacity_teachers]
    assert min(widths) < p.student.width < max(widths)  # a smaller and a larger teacher
    # the sweep: a random and a hard-sample method, at a low and a high fraction
    assert {shipped.family(m) for m in p.alpha_methods} == {"random", "hard"}
    assert min(p.alpha_fractions) <= 0.1 and max(p.alpha_fractions) >= 0.5
    # scores as their papers compute them: EL2N early and averaged, GraNd at init averaged, the dynamics whole
    e = p.student.epochs
    assert p.scores["el2n"].epochs < e and p.scores["el2n"].runs > 1
    assert p.scores["grand"].epochs == 0 and p.scores["grand"].runs > 1
    assert p.scores["forgetting"].epochs == p.scores["aum"].epochs == e
    at = lambda m, f: 0.5  # noqa: E731
    cells = grid.grid_cells(p, at)
    # 7 methods (RS2 too) x 3 pruned f x {no KD, KD} x 3 seeds, plus the f = 1 cells every method shares
    assert len({c.key for c in cells}) == 7 * 3 * 2 * 3 + 2 * 3
    assert all(c.epochs == e for c in cells)  # the same epochs at every fraction
    control = grid.control_cells(p, at)
    assert {c.fraction for c in control} == {0.1} and all(c.epochs * 0.1 == e for c in control)
    assert {c.fraction for c in grid.online_cells(p, at)} == {0.1, 0.3, 0.5}
    assert min(p.convergence_epochs) < e < max(p.convergence_epochs)


def test_kd_cells_never_have_alpha_zero():
    p = PRESETS["full"]
    at = lambda m, f: 0.0 if f >= 0.5 else 0.4  # noqa: E731 (a rule that reaches 0)
    cells = grid.grid_cells(p, at) + grid.capacity_cells(p, at) + grid.control_cells(p, at) + grid.online_cells(p, at)
    assert all(c.alpha > 0 for c in cells if c.teacher is not None)
    assert not any(c.kd and c.fraction >= 0.5 for c in cells)


def test_demo_uses_the_shipped_rule():
    p = PRESETS["demo"].validate()
    assert p.alpha_source == "shipped" and not grid.alpha_cells(p)
    cells = grid.grid_cells(p, lambda m, f: alphafit.shipped_alpha(f, m))
    kd = [c for c in cells if c.kd]
    assert kd and all(c.alpha == alphafit.shipped_alpha(c.fraction, c.method) > 0 for c in kd)


def test_preset_validation():
    with pytest.raises(ConfigError, match="unknown method"):
        grid.Preset(name="x", methods=("random", "magic")).validate()
    with pytest.raises(ConfigError, match="include 0"):
        grid.Preset(name="x", alphas=(0.5, 1.0)).validate()
    with pytest.raises(ConfigError, match="keep fraction"):
        grid.Preset(name="x", fractions=(0.0, 1.0)).validate()
    with pytest.raises(ConfigError, match="at least 2 fractions"):
        grid.Preset(name="x", alpha_fractions=(0.1,)).validate()
    grid.Preset(name="x", alpha_fractions=(0.1,), alpha_source="shipped").validate()


# ---- the alpha rule ---------------------------------------------------------------------------

def _rows(best: dict, alphas=(0.0, 0.5, 1.0), seeds=(0, 1)):
    """Accuracy peaked at ``best[f]``: 0.9 - |alpha - best| plus seed noise that does not move the peak."""
    return [{"fraction": f, "alpha": a, "test_accuracy": 0.9 - abs(a - b) + 0.001 * s}
            for f, b in best.items() for a in alphas for s in seeds]


def test_fit_per_family():
    fit = alphafit.fit_rules({"random": _rows({0.1: 0.5, 1.0: 0.0}), "el2n": _rows({0.1: 1.0, 0.5: 0.5})})
    assert set(fit["rules"]) == {"random", "hard"} and fit["rules"]["hard"]["fitted_on"] == "el2n"
    assert (fit["a"], fit["b"]) == (fit["rules"]["random"]["a"], fit["rules"]["random"]["b"])
    assert alphafit.rule_alpha(fit, 0.1, "random") == pytest.approx(0.5, abs=1e-3)
    assert alphafit.rule_alpha(fit, 0.1, "rs2") == alphafit.rule_alpha(fit, 0.1, "random")
    assert alphafit.rule_alpha(fit, 0.1, "forgetting") == pytest.approx(1.0, abs=1e-3)
    assert alphafit.rule_alpha(fit, 1.0, "random") == 0.0 and alphafit.rule_alpha(fit, 1e-4, "el2n") == 1.0
    assert alphafit.best_alphas(_rows({0.1: 1.0}))[0]["runs"] == 6


def test_a_rule_is_never_fitted_from_fewer_fractions_than_coefficients():
    with pytest.raises(ConfigError, match="2 coefficients"):
        alphafit.fit_rule(alphafit.best_alphas(_rows({0.2: 0.5})))
    rows = [{"fraction": 0.2, "alpha": a, "test_accuracy": 0.8} for a in (0.9, 0.25, 0.5)]
    assert alphafit.best_alphas(rows)[0]["best_alpha"] == 0.25  # ties: the smaller alpha


def test_fit_file_round_trip_and_the_shipped_format(tmp_path):
    fit = alphafit.fit_rules({"random": _rows({0.1: 1.0, 1.0: 0.0})})
    path = str(tmp_path / "alpha_fit.json")
    alphafit.write_fit(path, fit, {"preset": "test"})
    back = alphafit.read_fit(path)
    assert back["a"] == fit["a"] and back["source"] == {"preset": "test"}
    assert alphafit.read_fit(str(tmp_path / "missing.json")) is None
    shipped._load(path)  # a written fit is what the package reads: a maintainer can commit it as it is
    json.dump({"form": "something else", "a": 1, "b": 2}, open(path, "w"))
    with pytest.raises(ConfigError, match="not an alpha fit"):
        alphafit.read_fit(path)


def test_old_call_and_method_call_of_the_shipped_rule():
    assert shipped.alpha_for_fraction(0.3) == shipped.alpha_for_fraction(0.3, None)
    assert shipped.alpha_for_fraction(0.3, "random") == shipped.alpha_for_fraction(0.3, method="rs2")
    assert 0.0 < shipped.alpha_for_fraction(0.1, "el2n") <= 1.0


# ---- numbers and tables -----------------------------------------------------------------------

def test_mean_std_and_noise_verdicts():
    assert mean_std([90.0]) == "90.00"
    assert mean_std([80.0, 90.0]) == f"85.00 ± {np.std([80, 90], ddof=1):.2f}"
    assert mean_std([]) == "-"
    assert compare([80.0, 80.2, 79.9], [80.1, 79.8, 80.0])[1] == "within noise"
    assert compare([85.0, 85.2, 84.9], [80.1, 79.8, 80.0])[1] == "higher"
    assert compare([75.0, 75.2, 74.9], [80.1, 79.8, 80.0])[1] == "lower"
    assert compare([80.0], [79.0])[1].startswith("noise unknown")


def test_table_checker_catches_stray_rows():
    good = md_table(["f", "a", "b"], [["0.1", "1", "2"]])
    assert table_problems(good) == []
    assert table_problems("text\n| 0.9 | 74.79 | 80.93 |\nmore") != []
    assert table_problems(good + "\n| 0.9 | 74.79 |") != []
    with pytest.raises(ValueError, match="cells"):
        md_table(["a", "b"], [["1"]])


def test_estimate_counts_every_run():
    p = PRESETS["full"]
    items = work(p, 60000, 10000)
    students = [i for i in items if i["what"] == "student"]
    assert len(students) == len(grid.unique(grid.alpha_cells(p) + grid.grid_cells(p, lambda m, f: 0.5)
                                            + grid.capacity_cells(p, lambda m, f: 0.5)
                                            + grid.control_cells(p, lambda m, f: 0.5)
                                            + grid.online_cells(p, lambda m, f: 0.5) + grid.convergence_cells(p)))
    widths = {p.student.width, *(s.width for s in p.capacity_teachers)}
    rates = {"train": {w: 1e-4 for w in widths}, "forward": {w: 1e-5 for w in widths}, "grand": 1e-3}
    one, two = estimate(p, rates, 60000, 10000, jobs=1), estimate(p, rates, 60000, 10000, jobs=2)
    assert one["wall_s"] == pytest.approx(one["job_seconds"]) and one["student_runs"] == len(students)
    # three phases, each waiting for the one before: two jobs halve the work but not the longest item
    assert set(two["phases"]) == {"prepare", "sweep", "studies"}
    assert one["job_seconds"] / 2 < two["wall_s"] < one["job_seconds"]
    assert sum(ph["sum"] for ph in two["phases"].values()) == pytest.approx(two["job_seconds"])
    # a full-data run of 8 epochs alone is 60000 x 8 x 1e-4 s
    assert one["job_seconds"] > 60000 * p.student.epochs * 1e-4


# ---- end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reproduce") / "tiny")
    log = []
    summary = reproduce("tiny", out, device="cpu", progress=False, log=log.append)
    return out, summary, log


def _rows_of(out):
    return list(csv.DictReader(open(os.path.join(out, "results.csv"))))


def test_tiny_writes_every_output(tiny):
    out, summary, _ = tiny
    p = PRESETS["tiny"]
    assert summary["runs_finished"] == summary["runs_planned"] > 0
    rows = _rows_of(out)
    assert len(rows) == summary["runs_finished"] == len(os.listdir(os.path.join(out, "cells")))
    assert {r["method"] for r in rows} == set(p.methods) | {"full"}
    for r in rows:
        assert float(r["train_wall_time_s"]) > 0 and 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert r["studies"], f"{r['key']} belongs to no study"
        kd = r["kd"] == "True"
        assert kd == (float(r["alpha"]) > 0) == bool(r["teacher"])
        # f of the data for the same epochs: kept x epochs samples (RS2: a fresh subset of that size each epoch)
        assert int(r["samples_seen"]) == int(r["kept"]) * int(r["epochs"])
        assert int(r["kept"]) == round(float(r["fraction"]) * p.synthetic_samples)
        if kd:
            assert float(r["alpha"]) == alphafit.shipped_alpha(float(r["fraction"]), r["method"])
    assert any(r["online"] == "True" for r in rows) and any(r["method"] == "rs2" and r["kd"] == "True" for r in rows)
    assert {r["teacher"] for r in rows if r["teacher"]} == {p.main_teacher.name, *(s.name for s in p.capacity_teachers)}
    md = open(os.path.join(out, "results.md")).read()
    for heading in ("claims", "Accuracy by pruning method", "Time to accuracy", "Teacher capacity",
                    "Fixed-steps control", "Convergence", "Cost of the scores", "Teachers"):
        assert heading in md, heading
    # where the shipped rule gives 0 (hard-sample methods at large f) the grid says so instead of a KD row
    for line in md.splitlines():
        if line.startswith("| ") and "| KD |" in line:
            method = line.split("|")[1].strip()
            zero = [alphafit.shipped_alpha(f, method) == 0 for f in p.fractions]
            assert line.count("alpha 0: no KD run") == sum(zero), line
    for png in ("accuracy_vs_fraction.png", "capacity.png", "accuracy_vs_time.png"):
        assert open(os.path.join(out, png), "rb").read(8) == PNG_MAGIC and f"({png})" in md
    assert not os.path.exists(os.path.join(out, "alpha_fit.json"))
    # every teacher's one-off cost, every score's cost, the time table's rows
    for t in summary["teachers"].values():
        assert t["train_s"] > 0 and t["logits_s"] > 0
    assert set(summary["scores"]) == {"el2n", "grand", "forgetting", "aum", "teacher-el2n"}
    assert summary["scores"]["el2n"]["runs"] == p.scores["el2n"].runs
    configs = {s["config"] for s in summary["time_to_accuracy"]}
    assert configs == {"full data, no KD", "random + KD (store)", "random + KD (online teacher)", "RS2 + KD (store)"}


def test_tiny_curves_exclude_evaluation(tiny):
    out, _, _ = tiny
    cells = os.path.join(out, "cells")
    recs = [json.load(open(os.path.join(cells, n))) for n in os.listdir(cells)]
    curved = [r for r in recs if r["curve"]]
    assert curved and all(len(r["curve"]) == r["epochs"] for r in curved)
    for r in curved:
        times = [q["train_time_s"] for q in r["curve"]]
        assert times == sorted(times) and times[-1] <= r["train_wall_time_s"] + 1e-6
        assert r["eval_wall_time_s"] > 0


def test_every_markdown_table_is_well_formed(tiny, sweep):
    for out in (tiny[0], sweep[0]):
        md = open(os.path.join(out, "results.md")).read()
        assert table_problems(md) == [], out


def test_tiny_resumes_without_training(tiny):
    out, summary, _ = tiny
    cells = os.path.join(out, "cells")
    stamps = {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)}
    log = []
    again = reproduce("tiny", out, device="cpu", progress=False, log=log.append)
    assert again["runs_finished"] == summary["runs_finished"]
    assert {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)} == stamps
    assert not any("training" in line or "scores:" in line for line in log)


def test_a_lost_cell_is_rerun_alone(tiny):
    out, _, _ = tiny
    cells = os.path.join(out, "cells")
    victim = sorted(os.listdir(cells))[0]
    before = json.load(open(os.path.join(cells, victim)))
    os.remove(os.path.join(cells, victim))
    others = {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)}
    reproduce("tiny", out, device="cpu", progress=False, log=lambda line: None)
    after = json.load(open(os.path.join(cells, victim)))
    assert after["key"] == before["key"] and after["finished_at"] >= before["finished_at"]
    assert {n: os.path.getmtime(os.path.join(cells, n)) for n in others} == others


def test_another_recipe_in_the_same_directory_is_refused(tiny):
    out, _, _ = tiny
    p = PRESETS["tiny"]
    other = grid.Preset(**{**p.__dict__, "student": grid.ModelSpec("cnn", 4, 3)})
    with pytest.raises(ConfigError, match="another recipe"):
        Reproduction(other, out, device="cpu", progress=False)


def test_cli_publishes_results_and_never_writes_the_package(tiny, tmp_path, capsys):
    out, _, _ = tiny
    before = open(shipped.FIT_PATH).read()
    docs = str(tmp_path / "docs")
    assert main(["reproduce", "--preset", "tiny", "--out", out, "--device", "cpu", "--no-progress",
                 "--copy-to", docs]) == 0
    printed = capsys.readouterr().out
    assert "# kdprune reproduce --preset tiny" in printed and f"{out}/results.csv" in printed
    assert {"results.md", "results.csv", "accuracy_vs_time.png"} <= set(os.listdir(docs))
    assert set(copy_results(out, docs)) >= {"results.md", "capacity.png"}
    # tiny uses the shipped rule: there is no fitted rule to point to
    assert main(["reproduce", "--preset", "tiny", "--out", out, "--device", "cpu", "--no-progress",
                 "--write-alpha-fit"]) != 0
    assert "fitted no alpha rule" in capsys.readouterr().err
    assert open(shipped.FIT_PATH).read() == before


def test_cli_rejects_an_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The alpha sweep (random and EL2N at two fractions) and the grid after it, in two worker processes."""
    p = PRESETS["tiny"]
    small = grid.Preset(**{**p.__dict__, "name": "tiny-sweep", "methods": ("random", "el2n"), "alpha_source": "fit",
                           "alphas": (0.0, 1.0), "alpha_fractions": (0.5, 1.0), "alpha_seeds": (0,),
                           "capacity_teachers": (), "capacity_fractions": (), "fixed_steps_control": False,
                           "online_teacher": False, "convergence_epochs": ()})
    out = str(tmp_path_factory.mktemp("reproduce") / "sweep")
    lines = []
    return out, reproduce(small, out, device="cpu", progress=False, log=lines.append, jobs=2), lines, small


def test_sweep_fits_a_rule_per_family_in_the_run_directory(sweep):
    out, summary, lines, p = sweep
    assert summary["runs_finished"] == summary["runs_planned"]
    # the teacher and the score were made once, side by side in the workers, before the sweep
    assert [x for x in lines if "making" in x] == ["[reproduce] making teacher cnn-w4-e2, score el2n"]
    path = fitted_alpha_rule(out)
    assert path == os.path.join(out, "alpha_fit.json")
    fit = alphafit.read_fit(path)
    assert set(fit["rules"]) == {"random", "hard"} and fit["source"]["preset"] == "tiny-sweep"
    assert [q["fraction"] for q in fit["rules"]["hard"]["points"]] == [0.5, 1.0]
    # the grid's KD runs use the fitted rule of their family, and none has alpha 0
    for r in _rows_of(out):
        if r["kd"] == "True" and "grid" in r["studies"]:
            assert float(r["alpha"]) == alphafit.rule_alpha(fit, float(r["fraction"]), r["method"]) > 0
    md = open(os.path.join(out, "results.md")).read()
    assert "## Alpha sweep" in md and "Family hard (swept on el2n)" in md
    assert open(os.path.join(out, "alpha.png"), "rb").read(8) == PNG_MAGIC


def test_cli_estimate_measures_this_machine_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--preset", "tiny", "--estimate", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    runs = sum(1 for i in work(PRESETS["tiny"], 200, 33) if i["what"] == "student")
    assert "KD from a store" in printed and "with --jobs 2" in printed
    assert f"preset tiny: {runs} student runs" in printed
    assert not os.path.exists(tmp_path / "runs")  # nothing was trained into a run directory
