"""`kdprune reproduce`: the grid's cells, the alpha fit, and the tiny preset end to end (synthetic 12x12
data, one seed, two fractions, every method and study), resumption and the CLI.

The tiny preset is the smallest run that still touches every step (two teachers, every score, KD and
no-KD cells, the fit, the capacity study, every plot); it is trained once per module (~20 s on two
loaded cores) and the other end-to-end tests reuse it.
"""
import csv
import json
import os

import numpy as np
import pytest

from kdprune.cli import main
from kdprune.errors import ConfigError
from kdprune.reproduce import PRESETS, Reproduction, reproduce
from kdprune.reproduce import alphafit, grid
from kdprune.reproduce.outputs import mean_std, study_keys
from kdprune.reproduce.publish import copy_results, install_alpha_fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- the grid ---------------------------------------------------------------------------------

def test_cells_are_shared_where_runs_are_equal():
    # at f = 1 every method keeps everything: one cell, not one per method
    assert grid.make_cell("el2n", 1.0, 0.0, None, 0).key == grid.make_cell("random", 1.0, 0.0, None, 0).key
    # alpha = 0 needs no teacher, whatever teacher is named
    assert grid.make_cell("random", 0.1, 0.0, "t1", 0).key == grid.make_cell("random", 0.1, 0.0, None, 0).key
    # different alpha, teacher, seed or method: different runs
    keys = {grid.make_cell(*a).key for a in [("random", 0.1, 0.5, "t1", 0), ("random", 0.1, 0.5, "t2", 0),
                                            ("random", 0.1, 0.25, "t1", 0), ("random", 0.1, 0.5, "t1", 1),
                                            ("el2n", 0.1, 0.5, "t1", 0)]}
    assert len(keys) == 5


def test_full_preset_is_the_issues_grid():
    p = PRESETS["full"]
    assert p.fractions == (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    assert set(p.methods) == {"random", "el2n", "grand", "forgetting", "ccs", "teacher-el2n"}
    assert len(p.seeds) >= 3 and p.alphas == (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    assert p.capacity_fractions == (0.1, 0.5)
    widths = [s.width for s in p.capacity_teachers] + [p.teacher.width]
    assert min(widths) < p.student.width < max(widths)  # a smaller and a larger teacher than the student
    fit = {"form": alphafit.FORM, "a": 0.5, "b": -0.2}
    studies = study_keys(p, fit)
    grid_keys = {c.key for c in studies["grid"]}
    # 5 pruned fractions x 6 methods x {no KD, KD} x 3 seeds + the shared f = 1 cells (no KD, KD) x 3 seeds
    assert len(grid_keys) == 5 * 6 * 2 * 3 + 2 * 3
    alpha_keys = {c.key for c in studies["alpha"]}
    assert len(alpha_keys) == 6 * 6 * 3
    # the alpha study's alpha = 0 cells are the grid's random no-KD cells
    assert {c.key for c in studies["alpha"] if c.alpha == 0} <= grid_keys


def test_preset_validation():
    bad = grid.Preset(name="x", methods=("random", "magic"))
    with pytest.raises(ConfigError, match="unknown method"):
        bad.validate()
    with pytest.raises(ConfigError, match="include 0"):
        grid.Preset(name="x", alphas=(0.5, 1.0)).validate()
    with pytest.raises(ConfigError, match="keep fraction"):
        grid.Preset(name="x", fractions=(0.0, 1.0)).validate()


# ---- the alpha fit ----------------------------------------------------------------------------

def _rows(best: dict, alphas=(0.0, 0.5, 1.0), seeds=(0, 1)):
    """Accuracy peaked at ``best[f]``: 0.9 - |alpha - best| plus seed noise that does not move the peak."""
    return [{"fraction": f, "alpha": a, "test_accuracy": 0.9 - abs(a - b) + 0.001 * s}
            for f, b in best.items() for a in alphas for s in seeds]


def test_best_alpha_per_fraction_and_fit():
    pts = alphafit.best_alphas(_rows({0.1: 1.0, 0.3: 0.5, 1.0: 0.0}))
    assert [(p["fraction"], p["best_alpha"]) for p in pts] == [(0.1, 1.0), (0.3, 0.5), (1.0, 0.0)]
    assert all(p["runs"] == 6 for p in pts)
    fit = alphafit.fit_rule(pts)
    x, y = np.log([0.1, 0.3, 1.0]), np.array([1.0, 0.5, 0.0])
    b, a = np.polyfit(x, y, 1)
    assert fit["a"] == pytest.approx(a) and fit["b"] == pytest.approx(b) and fit["b"] < 0
    assert alphafit.rule_alpha(fit, 0.001) == 1.0 and alphafit.rule_alpha(fit, 10.0) == 0.0  # clipped


def test_ties_take_the_smaller_alpha_and_one_fraction_is_flat():
    rows = [{"fraction": 0.2, "alpha": a, "test_accuracy": 0.8} for a in (0.9, 0.25, 0.5)]
    pts = alphafit.best_alphas(rows)
    assert pts[0]["best_alpha"] == 0.25
    fit = alphafit.fit_rule(pts)
    assert fit["b"] == 0.0 and alphafit.rule_alpha(fit, 0.7) == 0.25
    with pytest.raises(ConfigError, match="alpha study"):
        alphafit.fit_rule([])


def test_fit_file_round_trip_and_bad_file(tmp_path):
    fit = alphafit.fit_rule(alphafit.best_alphas(_rows({0.1: 1.0, 1.0: 0.0})))
    path = str(tmp_path / "alpha_fit.json")
    alphafit.write_fit(path, fit, {"preset": "test"})
    back = alphafit.read_fit(path)
    assert back["a"] == fit["a"] and back["source"] == {"preset": "test"}
    assert alphafit.read_fit(str(tmp_path / "missing.json")) is None
    json.dump({"form": "something else", "a": 1, "b": 2}, open(path, "w"))
    with pytest.raises(ConfigError, match="not an alpha fit"):
        alphafit.read_fit(path)


def test_mean_std_format():
    assert mean_std([0.9]) == "90.00"
    assert mean_std([0.8, 0.9]) == f"85.00 ± {100 * np.std([0.8, 0.9], ddof=1):.2f}"
    assert mean_std([]) == "-"


# ---- end to end on the tiny preset ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reproduce") / "tiny")
    log = []
    summary = reproduce("tiny", out, device="cpu", progress=False, log=log.append)
    return out, summary, log


def test_tiny_writes_every_output(tiny):
    out, summary, _ = tiny
    assert summary["runs_finished"] == summary["runs_planned"] > 0
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    assert len(rows) == summary["runs_finished"] == len(os.listdir(os.path.join(out, "cells")))
    p = PRESETS["tiny"]
    assert {r["method"] for r in rows} == set(p.methods) | {"full"}
    for r in rows:
        assert float(r["wall_time_s"]) > 0 and float(r["train_wall_time_s"]) > 0
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert r["studies"], f"{r['key']} belongs to no study"
        kd = r["kd"] == "True"
        assert kd == (float(r["alpha"]) > 0) and kd == bool(r["teacher"])
        # the same epochs at every fraction: a run sees kept x epochs samples
        assert int(r["samples_seen"]) == int(r["kept"]) * p.student.epochs
        assert int(r["kept"]) == round(float(r["fraction"]) * p.synthetic_samples)
    assert any(r["kd"] == "True" for r in rows)  # the alpha study distils at alpha = 1
    assert {r["teacher"] for r in rows if r["teacher"]} >= {p.teacher.name, p.capacity_teachers[0].name}
    md = open(os.path.join(out, "results.md")).read()
    for heading in ("Accuracy by pruning method", "Alpha study", "Teacher capacity", "Wall time"):
        assert heading in md
    for png in ("accuracy_vs_fraction.png", "alpha.png", "capacity.png"):
        assert open(os.path.join(out, png), "rb").read(8) == PNG_MAGIC
        assert f"({png})" in md
    fit = alphafit.read_fit(os.path.join(out, "alpha_fit.json"))
    assert [q["fraction"] for q in fit["points"]] == list(p.fractions)
    assert fit["source"]["preset"] == "tiny" and "machine" in fit["source"]
    teacher = summary["teachers"][p.teacher.name]
    assert 0.0 <= teacher["test_accuracy"] <= 1.0
    # scores are computed once per seed and saved with their provenance
    assert os.path.exists(os.path.join(out, "scores", "el2n_s0.npy"))
    assert os.path.exists(os.path.join(out, "scores", "teacher-el2n.npy"))


def test_tiny_resumes_without_training(tiny):
    out, summary, _ = tiny
    cells = os.path.join(out, "cells")
    stamps = {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)}
    log = []
    again = reproduce("tiny", out, device="cpu", progress=False, log=log.append)
    assert again["runs_finished"] == summary["runs_finished"]
    assert {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)} == stamps
    assert not any("training" in line or "scores:" in line for line in log)
    assert any("done already" in line for line in log)


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
    other = grid.Preset(**{**p.__dict__, "student": grid.ModelSpec("cnn", 4, 2)})
    with pytest.raises(ConfigError, match="another recipe"):
        Reproduction(other, out, device="cpu", progress=False)


def test_cli_publishes_results(tiny, tmp_path, capsys):
    out, _, _ = tiny
    docs, fit_dest = str(tmp_path / "docs"), str(tmp_path / "alpha_fit.json")
    assert main(["reproduce", "--preset", "tiny", "--out", out, "--device", "cpu", "--no-progress",
                 "--copy-to", docs]) == 0
    printed = capsys.readouterr().out
    assert "# kdprune reproduce --preset tiny" in printed and f"{out}/results.csv" in printed
    assert {"results.md", "results.csv", "alpha_fit.json", "alpha.png"} <= set(os.listdir(docs))
    assert set(copy_results(out, docs)) >= {"results.md", "capacity.png"}
    install_alpha_fit(out, fit_dest)
    assert json.load(open(fit_dest))["form"] == alphafit.FORM


def test_cli_rejects_an_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err


def test_parallel_jobs_finish_every_cell(tmp_path):
    p = PRESETS["tiny"]
    small = grid.Preset(**{**p.__dict__, "name": "tiny-jobs", "methods": ("random", "el2n"),
                           "capacity_teachers": (), "capacity_fractions": ()})
    out = str(tmp_path / "jobs")
    lines = []
    summary = reproduce(small, out, device="cpu", progress=False, log=lines.append, jobs=2)
    assert summary["runs_finished"] == summary["runs_planned"] >= 4
    # the EL2N score was computed once (in a worker, before the cells that select by it) and saved
    assert lines.count("[reproduce] scores: el2n seed 0") == 1
    assert os.path.exists(os.path.join(out, "scores", "el2n_s0.json"))
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    assert {r["method"] for r in rows} == {"random", "el2n", "full"}
    with pytest.raises(ConfigError, match="jobs"):
        Reproduction(small, out, device="cpu", progress=False, jobs=0)
