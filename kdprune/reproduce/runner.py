"""Run (or resume) a reproduction: teachers -> scores -> alpha study -> fitted rule -> grid -> capacity.

Everything is written under ``out_dir`` and reused when it is already there: a teacher's checkpoint
and logit store, each seed's score files, and one JSON per finished student run under ``cells/``.
``results.csv``, ``results.md`` and the plots are regenerated from the cell files after every study,
so an interrupted reproduction shows what it has and resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from kdprune.errors import ConfigError
from kdprune.reproduce import alphafit, grid
from kdprune.reproduce.grid import METHOD_SCORE, Cell, ModelSpec, Preset


def machine_info(device: str) -> dict:
    """What ran it: CPU, cores torch uses, accelerator, versions."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json(path: str, obj) -> None:
    from kdprune.report import write_text_atomic
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


class Reproduction:
    """One reproduction of ``preset`` in ``out_dir``. :meth:`run` does all of it; the other methods
    are its steps, each reusing what is already on disk."""

    def __init__(self, preset: Preset, out_dir: str, *, data_dir: str | None = None, device: str = "cpu",
                 progress: bool = True, log=print, jobs: int = 1, _worker: bool = False):
        from kdprune.data import load_dataset

        self.p = preset.validate()
        self.out = out_dir
        self.data_dir = data_dir
        self.device = resolve_device(device)
        self.progress = progress
        self.log = log
        if int(jobs) < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        kw = {"num_samples": preset.synthetic_samples, "shape": tuple(preset.synthetic_shape)}
        self.train = load_dataset(preset.dataset, "train", data_dir, **kw)
        self.test = load_dataset(preset.dataset, "test", data_dir, **kw)
        self._stores = {}
        self._scores = {}
        self.teachers = {}  # name -> teacher metrics summary
        os.makedirs(os.path.join(out_dir, "cells"), exist_ok=True)
        if not _worker:
            self._check_preset()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _check_preset(self) -> None:
        """Refuse to mix runs of different training recipes in one directory."""
        path = os.path.join(self.out, "preset.json")
        mine = {"preset": self.p.as_dict(), "dataset_fingerprint": self.train.fingerprint}
        recipe = ("student", "teacher", "batch_size", "lr", "temperature", "score_epochs", "dataset",
                  "synthetic_samples", "synthetic_shape")
        if os.path.exists(path):
            theirs = _read_json(path)
            diff = [k for k in recipe if json.loads(json.dumps(mine["preset"][k])) != theirs["preset"].get(k)]
            if diff or theirs.get("dataset_fingerprint") != self.train.fingerprint:
                raise ConfigError(f"{self.out} holds runs of another recipe (differs in "
                                  f"{diff or ['dataset']}); use another --out, or delete that directory")
        _write_json(path, mine)

    def _train_config(self, spec: ModelSpec, seed: int, alpha: float = 0.0):
        from kdprune.train.config import TrainConfig
        # no augmentation: at a budget of a few epochs it costs accuracy and time, and the stored teacher
        # logits are then exactly those of the images the student sees
        return TrainConfig(model=spec.model, width=spec.width, epochs=spec.epochs, batch_size=self.p.batch_size,
                           lr=self.p.lr, alpha=alpha, temperature=self.p.temperature, augment=False, seed=seed,
                           device=self.device)

    # -- teachers -------------------------------------------------------------------------------
    def teacher_store(self, spec: ModelSpec):
        """Train ``spec`` on all training samples (once) and store its logits (once); return the store."""
        if spec.name in self._stores:
            return self._stores[spec.name]
        from kdprune.models import load_model
        from kdprune.store import TeacherStore
        from kdprune.logits import write_teacher_logits
        from kdprune.train import train_run

        tdir = os.path.join(self.out, "teachers", spec.name)
        metrics_path = os.path.join(tdir, "metrics.json")
        if not os.path.exists(metrics_path):
            self.log(f"[reproduce] teacher {spec.name}: training on all {len(self.train)} samples")
            train_run(self._train_config(spec, seed=0), self.train, self.test, out_dir=tdir,
                      progress=self.progress, desc=f"teacher {spec.name}", resume=True)
        m = _read_json(metrics_path)
        store_path = os.path.join(tdir, "logits")
        if not os.path.isdir(store_path):
            write_teacher_logits(load_model(os.path.join(tdir, "model.pt")), self.train, store_path,
                                 dtype="float16", device=self.device, progress=self.progress)
        self.teachers[spec.name] = {"model": spec.model, "width": spec.width, "epochs": spec.epochs,
                                    "test_accuracy": m["test_accuracy"], "wall_time_s": m["wall_time_s"]}
        self._stores[spec.name] = TeacherStore.open(store_path)
        return self._stores[spec.name]

    # -- scores ---------------------------------------------------------------------------------
    def score(self, name: str, seed: int) -> np.ndarray:
        """Score ``name`` (a :mod:`kdprune.scores` method) of seed ``seed``, computed once and saved;
        teacher scores do not depend on the seed and are computed once in all."""
        from kdprune.scores import load_scores, save_scores
        from kdprune.train.scoring import compute_score

        teacher_based = _seedless(name)
        stem = self._score_stem(name, seed)
        if stem in self._scores:
            return self._scores[stem]
        if not os.path.exists(stem + ".json"):
            s = self.p.student
            kw = {"store": self.teacher_store(self.p.teacher)} if teacher_based else {
                "seeds": [seed], "model": s.model, "width": s.width, "batch_size": self.p.batch_size,
                "lr": self.p.lr, "epochs": self.p.score_epochs.get(name)}
            self.log(f"[reproduce] scores: {name}{'' if teacher_based else f' seed {seed}'}")
            sf = compute_score(name, self.train, device=self.device, progress=self.progress, **kw)
            save_scores(stem, sf.scores, sf.meta)
        sf = load_scores(stem, expect_fingerprint=self.train.fingerprint, expect_num_samples=len(self.train))
        self._scores[stem] = sf.scores
        return sf.scores

    def _score_stem(self, name: str, seed: int) -> str:
        return os.path.join(self.out, "scores", name if _seedless(name) else f"{name}_s{seed}")

    def _missing_scores(self, cells: list[Cell]) -> list[tuple[str, int]]:
        """The (score, seed) pairs ``cells`` select by that are not on disk yet and train a model of
        their own (teacher scores only read the store)."""
        needed = {(METHOD_SCORE[c.method][0], c.seed) for c in cells if c.method in METHOD_SCORE}
        return sorted((n, s) for n, s in needed
                      if not _seedless(n) and not os.path.exists(self._score_stem(n, s) + ".json"))

    def subset(self, cell: Cell):
        """The ids a cell trains on (None = all)."""
        from kdprune.selection import prune

        if cell.method == grid.FULL:
            return None
        kw = {"labels": self.train.labels, "seed": cell.seed, "method": cell.method,
              "dataset_fingerprint": self.train.fingerprint}
        if cell.method == "random":
            return prune(None, cell.fraction, mode="random", **kw)
        score_name, mode = METHOD_SCORE[cell.method]
        return prune(self.score(score_name, cell.seed), cell.fraction, mode=mode, **kw)

    # -- student runs ---------------------------------------------------------------------------
    def cell_path(self, cell: Cell) -> str:
        return os.path.join(self.out, "cells", cell.key + ".json")

    def run_cell(self, cell: Cell, teacher: ModelSpec | None = None) -> dict:
        """Train the cell's student (unless its JSON exists) and return its record."""
        path = self.cell_path(cell)
        if os.path.exists(path):
            return _read_json(path)
        from kdprune.train import train_run

        teacher = teacher or self.p.teacher
        store = self.teacher_store(teacher) if cell.kd else None
        t0 = time.perf_counter()
        ids = self.subset(cell)
        select_s = time.perf_counter() - t0
        _, m = train_run(self._train_config(self.p.student, cell.seed, cell.alpha), self.train, self.test, ids,
                         store=store, keep_fraction=cell.fraction, progress=self.progress, desc=cell.key)
        record = {"key": cell.key, "method": cell.method, "fraction": cell.fraction, "kd": cell.kd,
                  "alpha": cell.alpha, "teacher": cell.teacher or "", "seed": cell.seed,
                  "test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"], "kept": m["kept"],
                  "samples_seen": m["samples_seen"], "train_wall_time_s": m["wall_time_s"],
                  "select_wall_time_s": select_s, "wall_time_s": time.perf_counter() - t0,
                  "student": self.p.student.name, "device": self.device, "torch_threads": _threads(),
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(path, record)
        return record

    def run_cells(self, cells: list[Cell], title: str, teachers: dict | None = None) -> list[dict]:
        """Run ``cells`` with a progress bar (in ``self.jobs`` worker processes when > 1); ``teachers``
        maps a teacher name to its spec. Returns every cell's record, in order."""
        from tqdm.auto import tqdm

        cells = grid.unique(cells)
        teachers = teachers or {}
        todo = [c for c in cells if not os.path.exists(self.cell_path(c))]
        self.log(f"[reproduce] {title}: {len(cells)} runs, {len(cells) - len(todo)} done already")
        if self.jobs > 1 and len(todo) > 1:
            self._run_parallel(todo, title, teachers)
        return [self.run_cell(c, teachers.get(c.teacher))
                for c in tqdm(cells, desc=title, disable=not self.progress or not todo or self.jobs > 1)]

    def _run_parallel(self, todo: list[Cell], title: str, teachers: dict) -> None:
        """Train ``todo`` in ``self.jobs`` processes of ``threads // jobs`` torch threads each. What the
        cells read is made first: the scores in the workers, the teacher stores here."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch
        from tqdm.auto import tqdm

        threads = max(1, torch.get_num_threads() // self.jobs)  # never more threads than this process has
        args = (self.p, self.out, self.data_dir, self.device, threads)
        with ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=args) as pool:
            # the scores train models too: one per worker side by side, not one after another here
            missing = self._missing_scores(todo)
            for name, seed in missing:
                self.log(f"[reproduce] scores: {name} seed {seed}")
            for fut in [pool.submit(_worker_score, name, seed) for name, seed in missing]:
                fut.result()
            for c in todo:
                if c.kd:
                    self.teacher_store(teachers.get(c.teacher) or self.p.teacher)
                self.subset(c)
            futures = [pool.submit(_worker_run, c, teachers.get(c.teacher)) for c in todo]
            for fut in tqdm(as_completed(futures), total=len(futures), desc=f"{title} ({self.jobs} jobs)",
                            disable=not self.progress):
                fut.result()

    # -- the whole reproduction -----------------------------------------------------------------
    def alpha_fit(self) -> dict:
        """The alpha study (run or reused), its fitted rule, written to ``alpha_fit.json``."""
        t = self.p.teacher.name
        rows = self.run_cells(grid.alpha_cells(self.p, t), "alpha study")
        fit = alphafit.fit_rule(alphafit.best_alphas(rows))
        source = {"preset": self.p.name, "dataset": self.train.name, "dataset_fingerprint": self.train.fingerprint,
                  "student": self.p.student.name, "teacher": t, "seeds": list(self.p.seeds),
                  "machine": machine_info(self.device), "command": f"kdprune reproduce --preset {self.p.name}"}
        alphafit.write_fit(os.path.join(self.out, "alpha_fit.json"), fit, source)
        return fit

    def run(self) -> dict:
        """Everything, in order; returns the summary written to ``summary.json``."""
        from kdprune.reproduce.outputs import write_outputs

        t0 = time.perf_counter()
        self.teacher_store(self.p.teacher)
        caps = {s.name: s for s in self.p.capacity_teachers}
        fit = self.alpha_fit()
        write_outputs(self)

        def alpha_at(f):
            return alphafit.rule_alpha(fit, f)
        self.run_cells(grid.grid_cells(self.p, self.p.teacher.name, alpha_at), "grid")
        write_outputs(self)
        if self.p.capacity_fractions and caps:
            for spec in caps.values():
                self.teacher_store(spec)
            names = [self.p.teacher.name, *caps]
            self.run_cells(grid.capacity_cells(self.p, names, alpha_at), "teacher capacity",
                           teachers={self.p.teacher.name: self.p.teacher, **caps})
        return write_outputs(self, total_wall_time_s=time.perf_counter() - t0)

    def records(self) -> list[dict]:
        """Every finished cell's record."""
        d = os.path.join(self.out, "cells")
        return [_read_json(os.path.join(d, n)) for n in sorted(os.listdir(d)) if n.endswith(".json")]


def _seedless(score: str) -> bool:
    """Teacher-based scores read the teacher's store: one file for all seeds, no model trained."""
    return score.startswith("teacher-")


_WORKER = None  # the Reproduction of a worker process


def _worker_init(preset, out_dir, data_dir, device, threads) -> None:
    import torch

    global _WORKER
    torch.set_num_threads(threads)  # this process's own pool: the jobs share the cores between them
    _WORKER = Reproduction(preset, out_dir, data_dir=data_dir, device=device, progress=False,
                           log=lambda line: None, _worker=True)


def _worker_score(name: str, seed: int) -> None:
    _WORKER.score(name, seed)


def _worker_run(cell: Cell, teacher: ModelSpec | None) -> str:
    _WORKER.run_cell(cell, teacher)
    return cell.key


def reproduce(preset: str | Preset = "reduced", out_dir: str | None = None, *, data_dir: str | None = None,
              device: str = "auto", progress: bool = True, log=print, jobs: int = 1) -> dict:
    """Run (or resume) the reproduction ``preset`` (a name from :data:`kdprune.reproduce.PRESETS` or a
    :class:`Preset`) in ``out_dir`` (default ``runs/reproduce/<preset>``); returns the summary.

    ``jobs`` > 1 trains that many student runs at once in worker processes, splitting torch's threads
    between them: on a few CPU cores, small models run faster as one-thread processes side by side
    than as one process whose threads wait on each other."""
    if isinstance(preset, str):
        if preset not in grid.PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(grid.PRESETS)}")
        preset = grid.PRESETS[preset]
    out_dir = out_dir or os.path.join("runs", "reproduce", preset.name)
    return Reproduction(preset, out_dir, data_dir=data_dir, device=device, progress=progress, log=log,
                        jobs=jobs).run()
