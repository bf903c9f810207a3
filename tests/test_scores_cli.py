"""`kdprune score` and `kdprune prune` end to end on small synthetic data."""
import json

import numpy as np

from kdprune import IndexSet
from kdprune.cli import main
from kdprune.data import load_dataset
from kdprune.scores import load_scores

DATA = ["--dataset", "synthetic", "--synthetic-samples", "300"]


def test_score_then_prune(tmp_path, capsys):
    stem = str(tmp_path / "grand")
    assert main(["score", "--method", "grand-last", "--width", "4", "--out", stem, "--no-progress"] + DATA) == 0
    ds = load_dataset("synthetic", num_samples=300)
    scores, meta = load_scores(stem, expect_fingerprint=ds.fingerprint)
    assert scores.shape == (300,) and meta["method"] == "grand-last" and meta["width"] == 4
    keep = str(tmp_path / "keep")
    assert main(["prune", "--scores", stem, "--fraction", "0.3", "--mode", "ccs", "--class-balanced",
                 "--seed", "2", "--out", keep] + DATA) == 0
    idx = IndexSet.load(keep)
    assert len(idx) == 90 and np.bincount(ds.labels[idx.ids]).tolist() == [9] * 10
    meta = json.loads(open(keep + ".json").read())
    assert meta["method"] == "grand-last-ccs" and meta["dataset_fingerprint"] == ds.fingerprint
    assert meta["seed"] == 2 and meta["class_balanced"] and meta["scores"] == stem
    hardest = str(tmp_path / "hard")
    assert main(["prune", "--scores", stem, "--fraction", "0.1", "--out", hardest] + DATA) == 0
    assert set(IndexSet.load(hardest).ids) == set(np.argsort(-scores)[:30])


def test_prune_random_and_bad_input(tmp_path, capsys):
    keep = str(tmp_path / "rand")
    assert main(["prune", "--random", "--fraction", "0.5", "--out", keep] + DATA) == 0
    assert len(IndexSet.load(keep)) == 150
    assert main(["prune", "--random", "--fraction", "1.5", "--out", keep] + DATA) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["prune", "--random", "--mode", "hardest", "--fraction", "0.5", "--out", keep] + DATA) == 2
    assert "needs --scores" in capsys.readouterr().err
    stem = str(tmp_path / "r")
    assert main(["score", "--method", "random", "--out", stem] + DATA) == 0
    other = ["--dataset", "synthetic", "--synthetic-samples", "200"]
    assert main(["prune", "--scores", stem, "--fraction", "0.5", "--out", keep] + other) == 2
    assert "compute the scores on this dataset" in capsys.readouterr().err
    assert main(["score", "--method", "teacher-margin", "--out", stem] + DATA) == 2
    assert "teacher store" in capsys.readouterr().err


def test_cli_offers_exactly_the_registered_score_methods():
    from kdprune.cli import build_parser
    from kdprune.registry import SCORE_METHODS

    score = build_parser()._subparsers._group_actions[0].choices["score"]
    method = next(a for a in score._actions if a.dest == "method")
    assert tuple(method.choices) == SCORE_METHODS.names()
    assert set(SCORE_METHODS.names()) >= {"el2n", "grand", "forgetting", "aum", "random", "teacher-el2n"}
