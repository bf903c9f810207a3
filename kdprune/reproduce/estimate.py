"""What a preset costs before it runs: its work counted in samples, timed with rates measured here.

Work: every teacher (training on all samples, one forward pass to write its logits), every score
(training runs, GraNd's per-sample gradients), every student run (kept samples x epochs of training,
the distillation's extra cost on each of them: a gather from the store and the KD loss, or an online
teacher's forward pass, and one test-set evaluation per evaluated epoch). Rates: seconds per sample of
training without and with KD from a store and of a forward pass at each model width, and of one
per-sample gradient, measured by short runs on this machine at ``threads`` torch threads (the threads each of the
``jobs`` workers gets). The reproduction runs in three phases, each waiting for the one before: the
teachers and scores, the alpha sweep, the other studies (they need the sweep's rule). A phase takes its
work divided among the jobs, or its longest item when that is longer; process start and the evaluation
of the test set by the main process come on top.
"""
from __future__ import annotations

import time

import numpy as np

from kdprune.reproduce import grid

CALIBRATION_SAMPLES = 3072
REPEATS = 2  # each rate is the faster of two runs: a short run on a shared machine is noisy


def _alpha_guess(method: str, f: float) -> float:
    """A positive alpha no sweep uses (a fitted rule's alpha rarely equals a swept one, so the grid's KD
    runs are not shared with the sweep's): the cost of a KD run does not depend on its value."""
    return 0.123


def work(p: grid.Preset, n_train: int, n_test: int) -> list[dict]:
    """Every unit of work of preset ``p`` on a dataset of ``n_train``/``n_test`` samples."""
    items = []
    for t in {s.name: s for s in (p.main_teacher, *p.capacity_teachers)}.values():
        items.append({"what": f"teacher {t.name}", "phase": "prepare", "width": t.width,
                      "train": n_train * t.epochs, "forward": n_train + n_test})
    needed = {grid.METHOD_SCORE[m][0] for m in p.methods if m in grid.METHOD_SCORE} - {"teacher-el2n"}
    for name in sorted(needed):
        spec = p.scores[name]
        items.append({"what": f"score {name}", "phase": "prepare", "width": p.student.width,
                      "train": spec.runs * spec.epochs * n_train, "grand": spec.runs * n_train if name == "grand" else 0})
    sweep = grid.unique(grid.alpha_cells(p))
    cells = grid.grid_cells(p, _alpha_guess) + grid.capacity_cells(p, _alpha_guess)
    cells += grid.control_cells(p, _alpha_guess) + grid.online_cells(p, _alpha_guess) + grid.convergence_cells(p)
    for c in grid.unique(sweep + cells):
        kept = round(c.fraction * n_train)
        evals = c.epochs if c.curve else 1
        items.append({"what": "student", "phase": "sweep" if c in sweep else "studies",
                      "width": p.student.width, "train": kept * c.epochs,
                      "kd": kept * c.epochs if c.kd and not c.online else 0, "forward": evals * n_test,
                      "teacher_forward": kept * c.epochs if c.online else 0, "teacher_width": p.main_teacher.width})
    return items


def _random_store(path: str, train):
    """A store of random logits for ``train``: what a KD step reads costs the same whatever the values."""
    from kdprune.store import TeacherStore

    rng = np.random.default_rng(0)
    with TeacherStore.create(path, len(train), train.num_classes, dataset_fingerprint=train.fingerprint) as w:
        for start in range(0, len(train), 8192):
            ids = np.arange(start, min(start + 8192, len(train)))
            w.write(ids, rng.standard_normal((len(ids), train.num_classes)).astype(np.float32))
    return TeacherStore.open(path)


def measure_rates(p: grid.Preset, train, test, threads: int = 1, device: str = "cpu") -> dict:
    """Seconds per sample: training and forward at each width of ``p``, the extra of KD from a store at
    the student's width, and GraNd's per-sample gradient."""
    import tempfile

    import torch

    from kdprune.models import build_model
    from kdprune.scores.grand import grand_scores
    from kdprune.train import TrainConfig, train_run

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rates = {"train": {}, "forward": {}}
        n = min(CALIBRATION_SAMPLES, len(train))
        ids = np.arange(n)
        for w in sorted({p.student.width, *(s.width for s in p.capacity_teachers)}):
            cfg = TrainConfig(model=p.student.model, width=w, epochs=1, batch_size=p.batch_size, lr=p.lr,
                              augment=False, device=device)
            train_run(cfg, train, test, ids[: p.batch_size * 2], progress=False)  # warm-up
            runs = [train_run(cfg, train, test, ids, progress=False)[1]["history"][-1] for _ in range(REPEATS)]
            rates["train"][w] = min(r["time_s"] for r in runs) / n
            rates["forward"][w] = min(r.get("eval_time_s", 0.0) for r in runs) / max(1, len(test))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(model=p.student.model, width=p.student.width, epochs=1, batch_size=p.batch_size,
                              lr=p.lr, augment=False, device=device, alpha=0.5)
            store = _random_store(tmp + "/logits", train)
            kd = min(train_run(cfg, train, test, ids, store=store, progress=False)[1]["history"][-1]["time_s"]
                     for _ in range(REPEATS))
            rates["kd"] = max(0.0, kd / n - rates["train"][p.student.width])
        torch.manual_seed(0)
        net = build_model(p.student.model, train.num_classes, train.image_shape[2], width=p.student.width)
        k = 256
        t0 = time.perf_counter()
        grand_scores(net, train.images[:k], train.labels[:k], device=device)
        rates["grand"] = (time.perf_counter() - t0) / k
        rates["threads"] = threads
        return rates
    finally:
        torch.set_num_threads(before)


def estimate(p: grid.Preset, rates: dict, n_train: int, n_test: int, jobs: int = 1) -> dict:
    """Seconds of each kind of work of preset ``p`` at ``rates`` (from :func:`measure_rates`), and the
    wall time with ``jobs`` workers."""
    tr, fw = rates["train"], rates["forward"]
    by, phases = {}, {}
    for it in work(p, n_train, n_test):
        s = it.get("train", 0) * tr[it["width"]] + it.get("forward", 0) * fw[it["width"]]
        s += it.get("kd", 0) * rates.get("kd", 0.0)
        s += it.get("teacher_forward", 0) * fw.get(it.get("teacher_width"), fw[it["width"]])
        s += it.get("grand", 0) * rates["grand"]
        ph = phases.setdefault(it["phase"], {"sum": 0.0, "longest": 0.0})
        ph["sum"] += s
        ph["longest"] = max(ph["longest"], s)
        kind = it["what"].split(" ")[0]
        by[kind] = by.get(kind, 0.0) + s
        by.setdefault("runs", 0)
        by["runs"] += it["what"] == "student"
    total = sum(v for k, v in by.items() if k != "runs")
    wall = sum(max(ph["sum"] / jobs, ph["longest"]) for ph in phases.values())
    return {"seconds": by, "job_seconds": total, "jobs": jobs, "wall_s": wall, "phases": phases,
            "student_runs": by.get("runs", 0)}
