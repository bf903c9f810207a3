"""Run (or resume) a reproduction: teachers -> scores -> alpha sweep and its rule -> every other study.

Everything is written under ``out_dir`` and reused when it is already there: a teacher's checkpoint,
logit store and costs, each score file, and one JSON per finished student run under ``cells/``.
``results.csv``, ``results.md`` and the plots are regenerated from those files after each phase, so an
interrupted reproduction shows what it has and resumes where it stopped.

With ``jobs`` > 1 every phase (teachers, scores, student runs) runs in that many worker processes.
"""
from __future__ import annotations

import contextlib
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


def curve(history: list[dict]) -> list[dict]:
    """Per evaluated epoch: training time so far (the evaluations' own time left out) and test accuracy."""
    out, eval_before = [], 0.0
    for r in history:
        if "test_accuracy" in r:
            out.append({"epoch": r["epoch"] + 1, "train_time_s": r["time_s"] - eval_before,
                        "test_accuracy": r["test_accuracy"]})
        eval_before += r.get("eval_time_s", 0.0)
    return out


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
        self._pool = None
        self.fit = None  # the alpha sweep's fitted rule (alpha_source "fit"), once known
        os.makedirs(os.path.join(out_dir, "cells"), exist_ok=True)
        if not _worker:
            self._check_preset()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _check_preset(self) -> None:
        """Refuse to mix runs of different training recipes in one directory."""
        path = os.path.join(self.out, "preset.json")
        mine = {"preset": self.p.as_dict(), "dataset_fingerprint": self.train.fingerprint}
        recipe = ("student", "teacher", "batch_size", "lr", "temperature", "scores", "dataset",
                  "synthetic_samples", "synthetic_shape")
        if os.path.exists(path):
            theirs = _read_json(path)
            diff = [k for k in recipe if json.loads(json.dumps(mine["preset"][k])) != theirs["preset"].get(k)]
            if diff or theirs.get("dataset_fingerprint") != self.train.fingerprint:
                raise ConfigError(f"{self.out} holds runs of another recipe (differs in "
                                  f"{diff or ['dataset']}); use another --out, or delete that directory")
        _write_json(path, mine)

    def _train_config(self, spec: ModelSpec, seed: int, *, alpha: float = 0.0, epochs: int | None = None,
                      rs2: float = 0.0, online: bool = False, eval_every: int = 0):
        from kdprune.train.config import TrainConfig
        # no augmentation: the stored teacher logits are then exactly those of the images the student sees
        return TrainConfig(model=spec.model, width=spec.width, epochs=epochs or spec.epochs,
                           batch_size=self.p.batch_size, lr=self.p.lr, alpha=alpha, temperature=self.p.temperature,
                           augment=False, seed=seed, device=self.device, rs2=rs2,
                           teacher="online" if online else "store", eval_every=eval_every)

    @contextlib.contextmanager
    def workers(self):
        """While open, the phases run in ``self.jobs`` worker processes of ``threads // jobs`` torch
        threads each (never more threads than this process has)."""
        if self.jobs < 2:
            yield
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        import torch

        threads = max(1, torch.get_num_threads() // self.jobs)
        args = (self.p, self.out, self.data_dir, self.device, threads)
        with ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=args) as pool:
            self._pool = pool
            try:
                yield
            finally:
                self._pool = None

    def _each(self, tasks: list[tuple[str, object]], title: str) -> None:
        """Each ``(method name, argument)`` task, e.g. ``("make_teacher", spec)``: in the workers when
        open, else here; in the order given (put the longest first: the pool then ends evenly)."""
        from tqdm.auto import tqdm

        if self._pool is None or len(tasks) < 2:
            for name, item in tasks:
                getattr(self, name)(item)
            return
        from concurrent.futures import as_completed
        futures = [self._pool.submit(_worker_call, name, item) for name, item in tasks]
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"{title} ({self.jobs} jobs)",
                        disable=not self.progress):
            fut.result()

    # -- teachers -------------------------------------------------------------------------------
    def teacher_dir(self, spec: ModelSpec) -> str:
        return os.path.join(self.out, "teachers", spec.name)

    def make_teacher(self, spec: ModelSpec) -> None:
        """Train ``spec`` on all training samples and store its logits, each once; ``cost.json`` holds
        the wall time of both."""
        from kdprune.logits import write_teacher_logits
        from kdprune.models import load_model
        from kdprune.train import train_run

        tdir = self.teacher_dir(spec)
        if not os.path.exists(os.path.join(tdir, "metrics.json")):
            self.log(f"[reproduce] teacher {spec.name}: training on all {len(self.train)} samples")
            train_run(self._train_config(spec, seed=0), self.train, self.test, out_dir=tdir,
                      progress=self.progress, desc=f"teacher {spec.name}", resume=True)
        cost_path = os.path.join(tdir, "cost.json")
        if not os.path.exists(cost_path):
            t0 = time.perf_counter()
            write_teacher_logits(load_model(os.path.join(tdir, "model.pt")), self.train, os.path.join(tdir, "logits"),
                                 dtype="float16", device=self.device, progress=self.progress)
            m = _read_json(os.path.join(tdir, "metrics.json"))
            _write_json(cost_path, {"train_s": m["wall_time_s"], "logits_s": time.perf_counter() - t0,
                                    "torch_threads": _threads()})

    def teacher_info(self, spec: ModelSpec) -> dict | None:
        """Accuracy and one-off costs of a finished teacher (None when not made yet)."""
        tdir = self.teacher_dir(spec)
        if not os.path.exists(os.path.join(tdir, "cost.json")):
            return None
        m, cost = _read_json(os.path.join(tdir, "metrics.json")), _read_json(os.path.join(tdir, "cost.json"))
        return {"model": spec.model, "width": spec.width, "epochs": spec.epochs, "test_accuracy": m["test_accuracy"],
                **cost}

    def teacher_store(self, spec: ModelSpec):
        if spec.name not in self._stores:
            from kdprune.store import TeacherStore
            self.make_teacher(spec)
            self._stores[spec.name] = TeacherStore.open(os.path.join(self.teacher_dir(spec), "logits"))
        return self._stores[spec.name]

    def teachers(self) -> dict[str, ModelSpec]:
        """Every teacher of the preset by name, the main one first."""
        return {s.name: s for s in (self.p.main_teacher, *self.p.capacity_teachers)}

    # -- scores ---------------------------------------------------------------------------------
    def score_stem(self, name: str) -> str:
        return os.path.join(self.out, "scores", name)

    def make_score(self, name: str) -> None:
        """Compute score ``name`` as the preset's ScoreSpec says (teacher scores: from the main store)."""
        from kdprune.scores import save_scores
        from kdprune.train.scoring import compute_score

        stem = self.score_stem(name)
        if os.path.exists(stem + ".json"):
            return
        if name.startswith("teacher-"):
            kw = {"store": self.teacher_store(self.p.main_teacher)}
        else:
            s, spec = self.p.student, self.p.scores[name]
            kw = {"seeds": list(range(spec.runs)), "model": s.model, "width": s.width, "epochs": spec.epochs,
                  "batch_size": self.p.batch_size, "lr": self.p.lr}
        self.log(f"[reproduce] scores: {name}")
        sf = compute_score(name, self.train, device=self.device, progress=self.progress, **kw)
        save_scores(stem, sf.scores, sf.meta)

    def score(self, name: str) -> np.ndarray:
        from kdprune.scores import load_scores

        if name not in self._scores:
            self.make_score(name)
            sf = load_scores(self.score_stem(name), expect_fingerprint=self.train.fingerprint,
                             expect_num_samples=len(self.train))
            self._scores[name] = sf.scores
        return self._scores[name]

    def subset(self, cell: Cell):
        """The fixed ids a cell trains on (None: all samples, or RS2's per-epoch subsets)."""
        from kdprune.selection import prune

        if cell.method in (grid.FULL, grid.RS2):
            return None
        kw = {"labels": self.train.labels, "seed": cell.seed, "method": cell.method,
              "dataset_fingerprint": self.train.fingerprint}
        if cell.method == "random":
            return prune(None, cell.fraction, mode="random", **kw)
        score_name, mode = METHOD_SCORE[cell.method]
        return prune(self.score(score_name), cell.fraction, mode=mode, **kw)

    # -- student runs ---------------------------------------------------------------------------
    def cell_path(self, cell: Cell) -> str:
        return os.path.join(self.out, "cells", cell.key + ".json")

    def run_cell(self, cell: Cell) -> dict:
        """Train the cell's student (unless its JSON exists) and return its record."""
        path = self.cell_path(cell)
        if os.path.exists(path):
            return _read_json(path)
        from kdprune.train import train_run

        spec = self.teachers().get(cell.teacher) if cell.kd else None
        store = self.teacher_store(spec) if cell.kd and not cell.online else None
        model = os.path.join(self.teacher_dir(spec), "model.pt") if cell.online else None
        t0 = time.perf_counter()
        ids = self.subset(cell)
        select_s = time.perf_counter() - t0
        cfg = self._train_config(self.p.student, cell.seed, alpha=cell.alpha, epochs=cell.epochs,
                                 rs2=cell.fraction if cell.method == grid.RS2 else 0.0, online=cell.online,
                                 eval_every=1 if cell.curve else 0)
        _, m = train_run(cfg, self.train, self.test, ids, store=store, teacher_model=model,
                         keep_fraction=cell.fraction, progress=self.progress, desc=cell.key)
        eval_s = sum(r.get("eval_time_s", 0.0) for r in m["history"])
        record = {"key": cell.key, "method": cell.method, "fraction": cell.fraction, "kd": cell.kd,
                  "alpha": cell.alpha, "teacher": cell.teacher or "", "online": cell.online, "epochs": cell.epochs,
                  "seed": cell.seed, "test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"],
                  "kept": m["kept"], "samples_seen": m["samples_seen"], "steps": m["steps"],
                  "train_wall_time_s": m["wall_time_s"] - eval_s, "eval_wall_time_s": eval_s,
                  "select_wall_time_s": select_s, "wall_time_s": m["wall_time_s"] - eval_s + select_s,
                  "curve": curve(m["history"]) if cell.curve else [],
                  "student": self.p.student.name, "device": self.device, "torch_threads": _threads(),
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(path, record)
        return record

    def run_cells(self, cells: list[Cell], title: str) -> list[dict]:
        """Run ``cells`` (in the workers when open); returns every cell's record, in order. What the
        cells read is made first: teachers, then scores."""
        cells = grid.unique(cells)
        todo = [c for c in cells if not os.path.exists(self.cell_path(c))]
        self.log(f"[reproduce] {title}: {len(cells)} runs, {len(cells) - len(todo)} done already")
        needed = {c.teacher for c in todo if c.kd}
        self.prepare([s for n, s in self.teachers().items() if n in needed],
                     {METHOD_SCORE[c.method][0] for c in todo if c.method in METHOD_SCORE})
        longest_first = sorted(todo, key=lambda c: -c.fraction * c.epochs)
        self._each([("run_cell", c) for c in longest_first], title)
        return [self.run_cell(c) for c in cells]

    def prepare(self, teachers: list[ModelSpec], scores) -> None:
        """Make the ``teachers`` and ``scores`` not on disk yet: those that need no teacher side by side,
        then the teacher scores (they read the main teacher's store)."""
        missing = [n for n in sorted(scores) if not os.path.exists(self.score_stem(n) + ".json")]
        if any(n.startswith("teacher-") for n in missing) and self.p.main_teacher not in teachers:
            teachers = [self.p.main_teacher, *teachers]
        tasks = [("make_teacher", s) for s in teachers if self.teacher_info(s) is None]
        tasks += [("make_score", n) for n in missing if not n.startswith("teacher-")]
        if tasks:
            self.log("[reproduce] making " + ", ".join(f"{'teacher ' + i.name if n == 'make_teacher' else 'score ' + i}"
                                                     for n, i in tasks))
        self._each(tasks, "teachers and scores")
        self._each([("make_score", n) for n in missing if n.startswith("teacher-")], "teacher scores")

    # -- the whole reproduction -----------------------------------------------------------------
    def alpha_at(self, method: str, fraction: float) -> float:
        """The distillation weight of ``method`` at ``fraction``: the sweep's fitted rule, or the shipped one."""
        if self.p.alpha_source == "fit":
            if self.fit is None:
                raise ConfigError("the alpha rule is not fitted yet: run the alpha sweep first")
            return alphafit.rule_alpha(self.fit, fraction, method)
        return alphafit.shipped_alpha(fraction, method)

    def alpha_sweep(self) -> dict | None:
        """The alpha sweep (run or reused) and its fitted rule, written to ``alpha_fit.json``."""
        if self.p.alpha_source != "fit":
            return None
        rows = self.run_cells(grid.alpha_cells(self.p), "alpha sweep")
        by_method = {m: [] for m in self.p.alpha_methods}
        for c, r in zip(grid.unique(grid.alpha_cells(self.p)), rows):
            for m in self.p.alpha_methods:  # f = 1 cells are "full": they belong to every family
                if c.method in (m, grid.FULL):
                    by_method[m].append(r)
        self.fit = alphafit.fit_rules(by_method)
        source = {"preset": self.p.name, "dataset": self.train.name, "dataset_fingerprint": self.train.fingerprint,
                  "student": self.p.student.name, "teacher": self.p.main_teacher.name,
                  "seeds": list(self.p.alpha_seeds), "machine": machine_info(self.device),
                  "command": f"kdprune reproduce --preset {self.p.name}"}
        alphafit.write_fit(os.path.join(self.out, "alpha_fit.json"), self.fit, source)
        return self.fit

    def study_cells(self) -> dict[str, list[Cell]]:
        """Every study's cells (the alpha sweep's, and the others once alpha is known)."""
        p = self.p
        out = {"alpha": grid.alpha_cells(p)}
        if p.alpha_source == "fit" and self.fit is None:
            return out
        at = self.alpha_at
        out.update({"grid": grid.grid_cells(p, at), "capacity": grid.capacity_cells(p, at),
                    "control": grid.control_cells(p, at), "online": grid.online_cells(p, at),
                    "convergence": grid.convergence_cells(p)})
        return out

    def run(self) -> dict:
        """Everything, in order; returns the summary written to ``summary.json``."""
        from kdprune.reproduce.outputs import write_outputs

        t0 = time.perf_counter()
        with self.workers():
            # everything the studies read that does not wait for the alpha rule, side by side
            self.prepare(list(self.teachers().values()),
                         {METHOD_SCORE[m][0] for m in self.p.methods if m in METHOD_SCORE})
            self.alpha_sweep()
            write_outputs(self)
            studies = self.study_cells()
            self.run_cells([c for name, cells in studies.items() if name != "alpha" for c in cells], "studies")
        return write_outputs(self, total_wall_time_s=time.perf_counter() - t0)

    def load_fit(self) -> None:
        """The fitted rule of an earlier run in this directory, when there is one."""
        if self.fit is None and self.p.alpha_source == "fit":
            self.fit = alphafit.read_fit(os.path.join(self.out, "alpha_fit.json"))

    def records(self) -> list[dict]:
        """Every finished cell's record."""
        d = os.path.join(self.out, "cells")
        return [_read_json(os.path.join(d, n)) for n in sorted(os.listdir(d)) if n.endswith(".json")]


_WORKER = None  # the Reproduction of a worker process


def _worker_init(preset, out_dir, data_dir, device, threads) -> None:
    import torch

    global _WORKER
    torch.set_num_threads(threads)  # this process's own pool: the jobs share the cores between them
    _WORKER = Reproduction(preset, out_dir, data_dir=data_dir, device=device, progress=False,
                           log=lambda line: None, _worker=True)


def _worker_call(name: str, item) -> None:
    getattr(_WORKER, name)(item)


def reproduce(preset: str | Preset = "demo", out_dir: str | None = None, *, data_dir: str | None = None,
              device: str = "auto", progress: bool = True, log=print, jobs: int = 1) -> dict:
    """Run (or resume) the reproduction ``preset`` (a name from :data:`kdprune.reproduce.PRESETS` or a
    :class:`Preset`) in ``out_dir`` (default ``runs/reproduce/<preset>``); returns the summary.

    ``jobs`` > 1 runs that many teachers, scores or student runs at once in worker processes, splitting
    torch's threads between them: on a few CPU cores, small models run faster as one-thread processes
    side by side than as one process whose threads wait on each other."""
    if isinstance(preset, str):
        if preset not in grid.PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(grid.PRESETS)}")
        preset = grid.PRESETS[preset]
    out_dir = out_dir or os.path.join("runs", "reproduce", preset.name)
    return Reproduction(preset, out_dir, data_dir=data_dir, device=device, progress=progress, log=log,
                        jobs=jobs).run()
