"""The CLI end to end on tiny synthetic data: the whole pipeline, resumption, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kdprune.cli import main

TINY = ["--dataset", "synthetic", "--synthetic-samples", "300", "--teacher-epochs", "1", "--epochs", "1",
        "--width", "4", "--teacher-width", "4", "--batch-size", "64", "--no-progress"]


def test_pipeline_end_to_end_and_resume(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["pipeline", "--name", "t", "--runs-dir", runs, "--fraction", "0.5", *TINY]) == 0
    out = os.path.join(runs, "t")
    summary = json.load(open(os.path.join(out, "metrics.json")))
    rows = {r["key"]: r for r in summary["students"]}
    assert set(rows) == {"full_nokd", "pruned_nokd", "pruned_kd"}
    assert rows["full_nokd"]["samples_seen"] == 300
    assert rows["pruned_nokd"]["samples_seen"] == rows["pruned_kd"]["samples_seen"] == 150
    assert rows["pruned_kd"]["alpha"] > 0 and rows["pruned_nokd"]["alpha"] == 0
    report = open(os.path.join(out, "report.md")).read()
    assert "random f=0.5, KD" in report and "samples seen" in report
    assert f"report: {out}/report.md" in capsys.readouterr().out
    # a second run reuses every artefact: nothing is retrained
    stamp = os.path.getmtime(os.path.join(out, "teacher", "model.pt"))
    assert main(["pipeline", "--name", "t", "--runs-dir", runs, "--fraction", "0.5", *TINY]) == 0
    assert os.path.getmtime(os.path.join(out, "teacher", "model.pt")) == stamp
    assert "done already" in capsys.readouterr().out
    again = json.load(open(os.path.join(out, "metrics.json")))  # the report keeps the time the steps took
    assert again["pipeline_wall_time_s"] == summary["pipeline_wall_time_s"] > 0
    assert f"Whole pipeline: {summary['pipeline_wall_time_s']:.0f} s" in open(os.path.join(out, "report.md")).read()


@pytest.mark.parametrize("fraction", ["0", "-0.1", "1.5", "nan"])
def test_fraction_outside_unit_interval_is_refused(tmp_path, capsys, fraction):
    rc = main(["pipeline", "--runs-dir", str(tmp_path), "--fraction", fraction, *TINY])
    assert rc == 2
    assert "keep fraction must lie in (0, 1]" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    rc = main(["data", "--data-dir", str(tmp_path / "missing")])
    assert rc == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_ids_out_of_range_are_refused():
    from kdprune.data import synthetic
    from kdprune.errors import DataError
    from kdprune.loaders import build

    ds = synthetic(50, 5)
    with pytest.raises(DataError, match=r"\[0, 50\)"):
        build("torch", ds, np.array([1, 2, 50]), batch_size=4, train=True)


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "kdprune", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("data", "pipeline"):
        assert cmd in out.stdout


def test_every_flag_of_every_command_says_what_it_does():
    """`kdprune COMMAND --help` explains each flag (hidden deprecated spellings aside)."""
    import argparse

    from kdprune.cli import build_parser

    silent = []
    for action in build_parser()._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                silent += [(name, a.option_strings or a.dest) for a in sub._actions
                           if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not silent, f"flags without a help text: {silent}"
