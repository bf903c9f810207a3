"""The whole pipeline in one call: teacher on all data -> its logits in a store -> a random subset ->
students with and without distillation -> report.

Every step writes its artefact atomically under ``runs/<name>/`` and is skipped when that artefact is
already there, so an interrupted pipeline resumes where it stopped (a student interrupted mid-run
continues from its checkpoint). Each step's time is kept in ``step_times.json`` when the step runs,
so the report's pipeline time is the sum over the steps whichever invocation ran them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from kdprune.train.config import TrainConfig


@dataclass
class PipelineConfig:
    """What the demo runs: one dataset, one keep fraction, a teacher and a student recipe."""

    name: str = "demo"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    fraction: float = 0.3
    runs_dir: str = "runs"
    synthetic_samples: int = 2000
    # batch 64 / lr 0.2: the recipe the reproduction's sweep found best for short pruned runs
    # (docs/reproduce.md); widths and epochs sized so `make demo` fits in 10 minutes on 2 CPU cores.
    # No augmentation: the store holds the teacher's logits on the clean images, so the student must
    # see those same images (random crops in 3 epochs also cost Fashion-MNIST ~3 points here).
    teacher: TrainConfig = field(default_factory=lambda: TrainConfig(
        width=16, epochs=3, batch_size=64, lr=0.2, augment=False))
    student: TrainConfig = field(default_factory=lambda: TrainConfig(
        width=8, epochs=3, batch_size=64, lr=0.2, augment=False))
    kd_alpha: float | str = "auto"
    temperature: float = 4.0
    store_dtype: str = "float16"

    @property
    def out_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _step(title: str, done: bool):
    print(f"[kdprune] {title}{' (done already, reusing)' if done else ''}", flush=True)


class StepTimes:
    """Seconds per pipeline step, in ``OUT/step_times.json``, written when a step runs."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "step_times.json")
        self.times = _load_json(self.path) if os.path.exists(self.path) else {}
        self.reused = []

    def run(self, key: str, done: bool, fn, fallback: float | None = None) -> None:
        """Run ``fn`` unless ``done``, recording its time; a reused step keeps the time recorded when
        it ran (or ``fallback``, the time its own artefact records)."""
        from kdprune.report import write_text_atomic

        if done:
            self.reused.append(key)
            if key not in self.times and fallback is not None:
                self.times[key] = fallback
            return
        t = time.perf_counter()
        fn()
        self.times[key] = time.perf_counter() - t
        write_text_atomic(self.path, json.dumps(self.times, indent=2))

    @property
    def total(self) -> float:
        return float(sum(self.times.values()))


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> dict:
    """Run (or resume) the pipeline; returns the summary written to ``metrics.json``."""
    from kdprune.data import load_dataset
    from kdprune.models import load_model
    from kdprune.selection import IndexSet, check_fraction, prune
    from kdprune.store import TeacherStore
    from kdprune.logits import write_teacher_logits
    from kdprune.train import train_run

    check_fraction(cfg.fraction)
    cfg.teacher.validate()
    cfg.student.validate()
    out = cfg.out_dir
    os.makedirs(out, exist_ok=True)
    times = StepTimes(out)
    kw = {"num_samples": cfg.synthetic_samples}
    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, **kw)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, **kw)
    print(f"[kdprune] {train_set.name}: {len(train_set)} train / {len(test_set)} test samples, "
          f"fingerprint {train_set.fingerprint}", flush=True)

    # 1. teacher on all of the training set
    teacher_dir = os.path.join(out, "teacher")
    done = os.path.exists(os.path.join(teacher_dir, "metrics.json"))
    _step(f"1/4 teacher ({cfg.teacher.model}, width {cfg.teacher.width}) on all {len(train_set)} samples", done)
    times.run("teacher", done, lambda: train_run(cfg.teacher, train_set, test_set, out_dir=teacher_dir,
                                                 progress=progress, desc="teacher", resume=True),
              fallback=_load_json(os.path.join(teacher_dir, "metrics.json"))["wall_time_s"] if done else None)
    teacher_metrics = _load_json(os.path.join(teacher_dir, "metrics.json"))

    # 2. its logits for every training sample, once
    store_path = os.path.join(out, "teacher_logits")
    done = os.path.isdir(store_path)
    _step("2/4 teacher logits -> store", done)
    times.run("logits", done, lambda: write_teacher_logits(
        load_model(os.path.join(teacher_dir, "model.pt")), train_set, store_path, dtype=cfg.store_dtype,
        progress=progress))
    store = TeacherStore.open(store_path)

    # 3. a random subset at the keep fraction
    stem = os.path.join(out, f"subset_random_f{cfg.fraction:g}")
    done = os.path.exists(stem + ".json")
    _step(f"3/4 random subset, keep fraction {cfg.fraction:g}", done)
    times.run("subset", done, lambda: prune(None, cfg.fraction, labels=train_set.labels, seed=cfg.student.seed,
                                            dataset_fingerprint=train_set.fingerprint, method="random").save(stem))
    subset = IndexSet.load(stem).check_dataset(len(train_set), train_set.fingerprint)

    # 4. students: full data, pruned without KD, pruned with KD
    kd = TrainConfig(**{**cfg.student.as_dict(), "alpha": cfg.kd_alpha, "temperature": cfg.temperature})
    plan = [("full data, no KD", "full_nokd", cfg.student, None, None),
            (f"random f={cfg.fraction:g}, no KD", "pruned_nokd", cfg.student, subset, None),
            (f"random f={cfg.fraction:g}, KD", "pruned_kd", kd, subset, store)]
    rows = []
    for i, (label, key, run_cfg, ids, run_store) in enumerate(plan):
        run_dir = os.path.join(out, "students", key)
        done = os.path.exists(os.path.join(run_dir, "metrics.json"))
        _step(f"4/4 student {i + 1}/3: {label}", done)
        times.run(key, done, lambda: train_run(run_cfg, train_set, test_set, ids, store=run_store, out_dir=run_dir,
                                               keep_fraction=cfg.fraction if ids is not None else 1.0,
                                               progress=progress, desc=key, resume=True),
                  fallback=_load_json(os.path.join(run_dir, "metrics.json"))["wall_time_s"] if done else None)
        m = _load_json(os.path.join(run_dir, "metrics.json"))
        rows.append({"run": label, "key": key, "keep_fraction": m["keep_fraction"],
                     "alpha": m["config"]["alpha"], "test_accuracy": m["test_accuracy"],
                     "wall_time_s": m["wall_time_s"], "samples_seen": m["samples_seen"]})

    summary = {"config": asdict(cfg), "dataset": {"name": train_set.name, "fingerprint": train_set.fingerprint,
                                                  "train": len(train_set), "test": len(test_set)},
               "teacher": {"test_accuracy": teacher_metrics["test_accuracy"],
                           "wall_time_s": teacher_metrics["wall_time_s"]},
               "students": rows, "pipeline_wall_time_s": times.total, "steps_reused": times.reused}
    write_report(out, summary)
    return summary


def write_report(out: str, summary: dict) -> str:
    """``metrics.json`` and ``report.md`` in ``out``; returns the report's path."""
    from kdprune.report import markdown_table, write_text_atomic

    write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(summary, indent=2))
    cfg = summary["config"]
    rows = [{"run": r["run"], "test acc (%)": f"{100 * r['test_accuracy']:.2f}",
             "alpha": f"{r['alpha']:.2f}", "wall time (s)": f"{r['wall_time_s']:.1f}",
             "samples seen": f"{r['samples_seen']:,}"} for r in summary["students"]]
    t = summary["teacher"]
    text = "\n".join([
        f"# kdprune report: {cfg['name']}",
        "",
        f"Dataset {summary['dataset']['name']} ({summary['dataset']['train']:,} train / "
        f"{summary['dataset']['test']:,} test, fingerprint `{summary['dataset']['fingerprint']}`).",
        f"Teacher: {cfg['teacher']['model']} width {cfg['teacher']['width']}, {cfg['teacher']['epochs']} epochs on "
        f"all samples: test accuracy {100 * t['test_accuracy']:.2f}% in {t['wall_time_s']:.1f} s.",
        f"Students: {cfg['student']['model']} width {cfg['student']['width']}, {cfg['student']['epochs']} epochs "
        f"(the same epochs at every keep fraction, so a pruned run sees fraction x the samples), "
        f"temperature {cfg['temperature']:g} for KD; "
        f"{'random-resized-crop augmentation' if cfg['student']['augment'] else 'no augmentation'}.",
        "",
        markdown_table(rows, ["run", "test acc (%)", "alpha", "wall time (s)", "samples seen"]),
        "",
        f"Whole pipeline: {summary['pipeline_wall_time_s']:.0f} s, the sum of its steps' times (a step "
        "already done is reused and keeps the time it took when it ran).",
        "",
    ])
    path = os.path.join(out, "report.md")
    write_text_atomic(path, text)
    return path
