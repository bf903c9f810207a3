"""One complete training run from a :class:`TrainConfig`: model, loaders, teacher, loss, fit, evaluate.

The CLI (`kdprune teacher`, `kdprune train`), the demo pipeline and the reproduction all call
:func:`train_run`, so a run means the same thing wherever it is started from.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from kdprune.data import Augment
from kdprune.errors import ConfigError
from kdprune.train.config import TrainConfig
from kdprune.train.loop import evaluate, fit
from kdprune.train.teacher import StoredTeacher


def _loaders(cfg: TrainConfig, train_set, test_set, ids, store):
    from kdprune.loaders import build

    augment, views = None, None
    if store is not None and store.meta.get("augment"):
        augment, views = Augment.from_dict(store.meta["augment"]), store.views  # replay the teacher's views
    elif cfg.augment:
        augment = Augment(seed=cfg.seed)
    train = build("torch", train_set, ids, batch_size=cfg.batch_size, train=True, seed=cfg.seed,
                  device=cfg.device, augment=augment, views=views)
    test = build("torch", test_set, np.arange(len(test_set)), batch_size=512, train=False, device=cfg.device)
    return train, test


def train_run(cfg: TrainConfig, train_set, test_set, ids=None, *, store=None, keep_fraction: float | None = None,
              out_dir: str | None = None, callbacks=(), progress: bool = True, desc: str = "train") -> tuple:
    """Train a fresh model on ``ids`` of ``train_set`` (all when None) and evaluate on ``test_set``.

    ``store`` (a TeacherStore) turns on distillation for ``cfg.alpha > 0``. Returns ``(model, metrics)``;
    with ``out_dir`` also writes ``model.pt`` (+ ``.json``) and ``metrics.json`` there.
    """
    from kdprune.loss import KDLoss
    from kdprune.models import build_model, save_model

    cfg.validate()
    ids = np.arange(len(train_set)) if ids is None else np.asarray(getattr(ids, "ids", ids))
    fraction = keep_fraction if keep_fraction is not None else len(ids) / len(train_set)
    alpha = cfg.alpha
    if alpha == "auto":
        from kdprune.loss import alpha_for_fraction
        alpha = float(alpha_for_fraction(fraction))
    if alpha > 0 and store is None:
        raise ConfigError(f"alpha={alpha} distils from a teacher: pass a teacher store (kdprune logits)")
    torch.manual_seed(cfg.seed)
    h, w, c = train_set.image_shape
    model = build_model(cfg.model, train_set.num_classes, c, width=cfg.width)
    teacher = StoredTeacher(store, train_set.fingerprint, len(train_set)) if alpha > 0 else None
    loss_fn = KDLoss(alpha=alpha, temperature=cfg.temperature)
    train_loader, test_loader = _loaders(cfg, train_set, test_set, ids, store if alpha > 0 else None)
    t0 = time.perf_counter()
    history = fit(model, train_loader, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn, teacher=teacher,
                  optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, callbacks=callbacks,
                  device=cfg.device, progress=progress, desc=desc)
    test = evaluate(model, test_loader, cfg.device)
    metrics = {"config": {**cfg.as_dict(), "alpha": alpha}, "keep_fraction": fraction, "kept": int(len(ids)),
               "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "samples_seen": history.samples_seen, "wall_time_s": time.perf_counter() - t0,
               "history": history.epochs}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        spec = {"name": cfg.model, "num_classes": train_set.num_classes, "in_channels": c,
                "kwargs": {"width": cfg.width}, "dataset_fingerprint": train_set.fingerprint}
        save_model(os.path.join(out_dir, "model.pt"), model, spec)
        tmp = os.path.join(out_dir, "metrics.json.tmp")
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
        os.replace(tmp, os.path.join(out_dir, "metrics.json"))
    return model, metrics
