"""One complete training run from a :class:`TrainConfig`: model, loaders, teacher, loss, fit, evaluate.

The CLI (`kdprune teacher`, `kdprune train`), the demo pipeline and the reproduction all call
:func:`train_run`, so a run means the same thing wherever it is started from. Under torchrun it joins
the process group itself; every check of the inputs happens before the first step.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from kdprune.atomic import atomic_open
from kdprune.data import Augment
from kdprune.errors import ConfigError
from kdprune.train import distributed as dist
from kdprune.train import checkpoint as ckpt
from kdprune.train.config import TrainConfig
from kdprune.train.loop import Trainer
from kdprune.train.teacher import OnlineTeacher, StoredTeacher


def _loaders(cfg: TrainConfig, train_set, test_set, ids, store, device, per_rank_batch: int,
             sources=(None, None)):
    """This rank's train loader and its share of the test set. ``sources`` are converted copies
    (an FFCV ``.beton`` or a DALI directory) read instead of the datasets when ``cfg.loader`` is not
    ``torch``; the datasets still give labels, sizes and the fingerprint the conversion is checked against."""
    from kdprune.loaders import build

    out_size = (cfg.image_size, cfg.image_size) if cfg.image_size else None
    augment, views = None, None
    if store is not None:  # the student sees exactly the views the teacher's logits were computed on
        augment, views = replay_views(cfg, store, _native_size(train_set))
    elif cfg.augment is not False:
        augment = Augment(seed=cfg.seed, out_size=out_size)

    # evaluation's resize + centre crop (and crops of images of any size) at the training crop's size
    sized = {"image_size": (augment.out_size if augment is not None else None) or out_size}

    def extra(dataset, converted, loader) -> dict:
        if loader == "torch":
            return sized if hasattr(dataset, "images") else {"workers": cfg.workers, **sized}
        if converted is None:
            raise ConfigError(f"loader {loader!r} reads a converted copy of the data: pass its path "
                              f"(--train-data / --val-data, made by `kdprune convert --format {loader}`)")
        return {"path": converted, "workers": cfg.workers, **sized}  # checked against the dataset's fingerprint

    def train_loader(subset):
        return build(cfg.loader, train_set, subset, batch_size=per_rank_batch, train=True, seed=cfg.seed,
                     device=device, augment=augment, views=views, **extra(train_set, sources[0], cfg.loader))

    if cfg.rs2:  # a fresh subset each epoch: the loader is rebuilt for it, so its length follows it
        from kdprune.loaders.rs2 import RS2Loader, RS2Sampler
        rs2 = RS2Sampler(len(train_set), cfg.rs2, seed=cfg.seed, dataset_fingerprint=train_set.fingerprint)
        train = RS2Loader(rs2, train_loader)
    else:
        train = train_loader(ids)
    # evaluation: each rank takes every world-th test sample, unpadded, and the sums are reduced
    test_ids = np.arange(len(test_set))[dist.rank()::dist.world_size()]
    test_loader = cfg.loader if sources[1] is not None else "torch"
    test = build(test_loader, test_set, test_ids, batch_size=cfg.eval_batch_size, train=False, device=device,
                 distributed=False, **extra(test_set, sources[1], test_loader)) if len(test_ids) else []
    return train, test


def replay_views(cfg: TrainConfig, store, native=None) -> tuple:
    """``(augment, views)`` that replay the views of ``store``; an error naming the `kdprune logits`
    command of a matching store when ``cfg`` asks for another augmentation. ``native``: (H, W) of the
    training images, which an unaugmented run trains on."""
    made = store.meta.get("augment")
    aug = Augment.from_dict(made) if made else None
    if aug is not None and aug.out_size is None and store.meta.get("input_size"):
        aug = dataclasses.replace(aug, out_size=tuple(store.meta["input_size"]))  # the views were cropped to it
    want_size = (cfg.image_size, cfg.image_size) if cfg.image_size else None
    problem = None
    if cfg.augment is True and aug is None:
        problem = ("holds the teacher's logits of the unaugmented images, but this run asks for augmentation "
                   "(the student would be taught on crops with the logits of images it never sees)")
        fix = "drop --augment to train on the images the teacher saw, or make a store of augmented views"
    elif cfg.augment is False and aug is not None:
        problem = f"holds the teacher's logits of {store.views} augmented view(s), but this run turns augmentation off"
        fix = "drop --no-augment to replay the store's views, or make a store of the unaugmented images"
    elif aug is not None and want_size and aug.out_size is not None and tuple(aug.out_size) != want_size:
        problem = (f"holds views cropped to {tuple(aug.out_size)}, but this run asks for --image-size "
                   f"{cfg.image_size}")
        fix = "drop --image-size to replay the store's views, or make a store of views of that size"
    elif aug is None and store.meta.get("input_size") and native and tuple(store.meta["input_size"]) != tuple(native):
        problem = (f"holds the teacher's logits of images resized to {tuple(store.meta['input_size'])}, but this "
                   f"run trains on the unaugmented images at their own size {tuple(native)}")
        fix = "make a store of the images at their own size (without --image-size)"
    if problem is None:
        return aug, (store.views if aug is not None else None)
    teacher = store.meta.get("teacher")
    ckpt_path = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    views = "--views 4 --augment" if cfg.augment is not False else "--views 1"
    if want_size and cfg.augment is not False:
        views += f" --image-size {cfg.image_size}"
    from kdprune.provenance import dataset_flags
    ckpt_path = ckpt_path or "TEACHER/model.pt"
    raise ConfigError(f"the teacher store {store.path} {problem}; {fix}: `kdprune logits --teacher {ckpt_path} "
                      f"{dataset_flags(store.meta.get('dataset'))} {views} --out NEW_STORE` (or distil online: "
                      f"--teacher online --teacher-model {ckpt_path}, which sees any augmentation)")


def _native_size(dataset):
    """(H, W) of an in-memory dataset (its images share one size), else None (a JPEG folder's vary)."""
    images = getattr(dataset, "images", None)
    return tuple(images.shape[1:3]) if images is not None else None


def image_shape(dataset) -> tuple:
    """(H, W, C) of a dataset's images (a property of in-memory sets, a method of JPEG folders)."""
    shape = dataset.image_shape
    return tuple(shape() if callable(shape) else shape)


def run_inputs(train_set, ids, store) -> dict:
    """What a run reads, by fingerprint: its dataset, the subset's ids (None: all) and the teacher
    store (None: no store), recorded in its checkpoint and metrics.json."""
    import hashlib

    out = {"dataset": train_set.fingerprint, "dataset_name": getattr(train_set, "name", None)}
    if ids is not None and len(ids) != len(train_set):
        out["subset"] = hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]
        out["subset_name"] = f"{len(ids)} ids, sha256 {out['subset']}"
    if store is not None:
        out["store"] = str(store.meta.get("header_crc32"))
        out["store_name"] = f"{store.path} (header crc32 {out['store']})"
    return out


def _check_subset(ids, train_set) -> None:
    """An IndexSet (or anything with ``.meta``) made for another dataset stops the run here."""
    meta = getattr(ids, "meta", None)
    if isinstance(meta, dict):
        from kdprune.provenance import require_same
        require_same(meta, train_set, what="the subset (IndexSet)",
                     fix="prune this dataset with `kdprune prune --dataset ...`, or train on the subset's dataset")


def _resolve_alpha(cfg: TrainConfig, fraction: float, has_teacher: bool, method: str | None = None) -> float:
    """The run's alpha: ``cfg.alpha``; None means "auto" with a teacher and 0 without one. "auto" takes the
    rule of ``method``'s family (the subset's pruning score: hard-sample methods want more KD at small f)."""
    if cfg.alpha is None:
        if not has_teacher:
            return 0.0
        cfg = TrainConfig.from_dict({**cfg.as_dict(), "alpha": "auto"})
    if cfg.alpha == "auto":
        from kdprune.loss import alpha_for_fraction
        return float(alpha_for_fraction(fraction, method=method))
    return float(cfg.alpha)


def _teacher(cfg: TrainConfig, alpha: float, store, teacher_model, train_set, device):
    """The teacher source for ``cfg.teacher``, checked against the dataset before training starts."""
    if alpha == 0:
        return None
    if cfg.teacher == "store":
        if store is None:
            raise ConfigError(f"alpha={alpha} distils from a teacher, but the run has none: pass a teacher "
                              "store (--store DIR, made by `kdprune logits`), or distil online (--teacher online "
                              "--teacher-model TEACHER/model.pt), or set --alpha 0 for cross-entropy only")
        store.check_fingerprint(train_set, missing_ok=True)  # a store of the user's own making may have none
        return StoredTeacher(store, train_set.fingerprint, len(train_set), train_set.num_classes)
    if teacher_model is None:
        raise ConfigError("teacher='online' needs a teacher model (--teacher-model PATH from `kdprune teacher`)")
    if isinstance(teacher_model, (str, os.PathLike)):
        from kdprune.models import load_model
        from kdprune.provenance import require_same
        teacher_model = os.fspath(teacher_model)
        spec_path = teacher_model + ".json"
        if os.path.exists(spec_path):
            with open(spec_path) as f:
                require_same(json.load(f), train_set, what=f"the teacher model {teacher_model}",
                             fix="train the teacher on this dataset with `kdprune teacher --dataset ...`, or "
                                 "train the student on the teacher's dataset")
        teacher_model = load_model(teacher_model)
    teacher_model.to(device)
    if cfg.channels_last:
        teacher_model.to(memory_format=torch.channels_last)
    h, w, c = image_shape(train_set)
    side = cfg.image_size or None
    with torch.no_grad():  # one probe sample: a teacher with the wrong head fails now, not mid-epoch
        probe = teacher_model.eval()(torch.zeros(1, c, side or h, side or w, device=device))
    if probe.shape[-1] != train_set.num_classes:
        raise ConfigError(f"the teacher model outputs {probe.shape[-1]} classes but the dataset has "
                          f"{train_set.num_classes}; train the teacher on this dataset")
    return OnlineTeacher(teacher_model)


def train_run(cfg: TrainConfig, train_set, test_set, ids=None, *, store=None, keep_fraction: float | None = None,
              out_dir: str | None = None, callbacks=(), progress: bool = True, desc: str = "train",
              teacher_model=None, resume: bool = False, overwrite: bool = False, timing: bool = False,
              sources: tuple = (None, None)) -> tuple:
    """Train a fresh model on ``ids`` of ``train_set`` (all when None) and evaluate on ``test_set``.

    ``store`` (a TeacherStore) turns on distillation for ``cfg.alpha > 0`` (``cfg.teacher="store"``);
    with ``cfg.teacher="online"``, ``teacher_model`` (a module or a saved model path) runs on each batch.
    Returns ``(model, metrics)`` (the EMA weights when ``cfg.ema`` > 0). With ``out_dir``, rank 0
    writes ``model.pt`` (+ ``.json``), ``metrics.json``, ``metrics.jsonl``, ``checkpoint.pt`` and the
    training-time EL2N score file ``el2n.npy`` (+ ``.json``; ``el2n_epochs.npy`` has one row per epoch);
    ``resume=True`` continues from ``out_dir/checkpoint.pt`` when there is one; an ``out_dir`` holding
    a finished or unfinished run is an error unless ``resume`` or ``overwrite``. ``cfg.alpha`` None
    means "auto" when the run has a teacher (a store, or a teacher model) and 0 when it has none. ``sources`` =
    (train, test) paths of converted copies for ``cfg.loader`` ``ffcv``/``dali`` (test may be None).
    ``cfg.rs2`` > 0 trains each epoch on a fresh RS2 subset of that fraction of ``train_set``
    (:mod:`kdprune.loaders.rs2`; ``ids`` must then be None).
    """
    from kdprune.loss import KDLoss
    from kdprune.loss.alpha import family
    from kdprune.models import build_model, model_kwargs, save_model

    cfg.validate()
    if out_dir and not resume and not overwrite and ckpt.run_state(out_dir) == "finished":
        raise ConfigError(f"{out_dir} holds a finished run (its metrics.json); read that, or pass "
                          "overwrite=True (--overwrite) to train again, or resume=True to reuse its checkpoint")
    device = dist.setup(cfg.device)
    per_rank_batch = cfg.per_rank_batch(dist.world_size())
    if cfg.rs2 and ids is not None:
        raise ConfigError(f"rs2={cfg.rs2} draws each epoch's subset from the whole dataset; drop the fixed "
                          "subset (--subset / ids) or set rs2=0")
    _check_subset(ids, train_set)
    # the pruning method picks the alpha rule: the score an IndexSet was pruned by (or its scored mode:
    # hardest, easiest, ccs), RS2, or random
    meta = getattr(ids, "meta", None) or {}
    method = "rs2" if cfg.rs2 else (meta.get("scores_method") or meta.get("mode"))
    ids = np.arange(len(train_set)) if ids is None else np.asarray(getattr(ids, "ids", ids))
    kept = int(round(cfg.rs2 * len(train_set))) if cfg.rs2 else len(ids)  # samples per epoch
    fraction = keep_fraction if keep_fraction is not None else kept / len(train_set)
    if cfg.teacher == "store" and store is None and teacher_model is not None:
        cfg = TrainConfig.from_dict({**cfg.as_dict(), "teacher": "online"})  # a teacher model given: run it
    has_teacher = (store is not None) if cfg.teacher == "store" else (teacher_model is not None)
    alpha = _resolve_alpha(cfg, fraction, has_teacher, method)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    h, w, c = image_shape(train_set)
    kwargs = model_kwargs(cfg.model, cfg.width, cfg.norm)
    model = build_model(cfg.model, train_set.num_classes, c, **kwargs)
    teacher = _teacher(cfg, alpha, store, teacher_model, train_set, device)
    loss_fn = KDLoss(alpha=alpha, temperature=cfg.temperature, label_smoothing=cfg.label_smoothing,
                     kernel=cfg.loss_kernel)
    replay = store if (alpha > 0 and cfg.teacher == "store") else None
    train_loader, test_loader = _loaders(cfg, train_set, test_set, ids, replay, device, per_rank_batch,
                                         sources)
    run_cfg = TrainConfig.from_dict({**cfg.as_dict(), "device": str(device)})
    if out_dir and overwrite and dist.is_main() and os.path.exists(os.path.join(out_dir, ckpt.METRICS)):
        os.remove(os.path.join(out_dir, ckpt.METRICS))  # starting over: the old run is no longer "finished"
    inputs = run_inputs(train_set, None if cfg.rs2 else ids, store if teacher is not None else None)
    trainer = Trainer(model, train_loader, loss_fn, run_cfg, teacher=teacher, eval_loader=test_loader,
                      callbacks=callbacks, out_dir=out_dir, progress=progress, desc=desc,
                      num_samples=len(train_set), timing=timing, inputs=inputs)
    history = trainer.fit(resume=resume, overwrite=overwrite)
    final = trainer.ema.module if trainer.ema is not None else trainer.model
    last = history.epochs[-1] if history.epochs else {}
    metrics = {"config": {**cfg.as_dict(), "alpha": alpha}, "inputs": inputs, "keep_fraction": fraction, "kept": kept,
               "alpha_family": family(method) or "random",
               "test_accuracy": last.get("test_accuracy", float("nan")),
               "test_loss": last.get("test_loss", float("nan")),
               "samples_seen": history.samples_seen, "wall_time_s": history.wall_time_s,
               "world_size": dist.world_size(), "steps": trainer.step, "history": history.epochs}
    if history.timing:
        metrics["timing"] = history.timing
    if out_dir and dist.is_main():
        spec = {"name": cfg.model, "num_classes": train_set.num_classes, "in_channels": c, "kwargs": kwargs,
                "dataset_fingerprint": train_set.fingerprint, "dataset": getattr(train_set, "name", None),
                "ema": cfg.ema > 0}
        save_model(os.path.join(out_dir, "model.pt"), final, spec)
        _save_scores(out_dir, trainer.scores, train_set, fraction)
        _write_json(os.path.join(out_dir, "metrics.json"), metrics)
    dist.barrier()
    return final, metrics


def _save_scores(out_dir: str, table, train_set, fraction: float) -> None:
    """``el2n.npy`` (float32 [N], NaN outside the subset) + ``el2n.json``, and ``el2n_epochs.npy``."""
    if table is None:
        return
    for name, arr in (("el2n_epochs.npy", table.rows()), ("el2n.npy", table.score())):
        with atomic_open(os.path.join(out_dir, name), "wb") as f:
            np.save(f, arr)
    _write_json(os.path.join(out_dir, "el2n.json"),
                {"method": "el2n", "source": "training", "epochs": int(len(table.rows())),
                 "orientation": "higher = harder", "num_samples": len(train_set),
                 "dataset_fingerprint": train_set.fingerprint, "keep_fraction": fraction,
                 "note": "mean over epochs of each sample's EL2N at its training steps; NaN = not trained on"})


def _write_json(path: str, obj) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2)
