"""``compute_score``: train a scoring model and compute a pruning score with it.

The scores themselves live in :mod:`kdprune.scores` (recorders the trainer calls, and functions of a
trained model or of the stored teacher logits); this module is the training around them, so it sits
in the training layer, above scores, loaders and the loss. Which methods exist, their kind and their
default epochs come from :data:`kdprune.registry.SCORE_METHODS`.
"""
from __future__ import annotations

import time

import numpy as np

from kdprune.errors import ConfigError
from kdprune.registry import SCORE_METHODS
from kdprune.scores.dynamics import average
from kdprune.scores.io import ScoreFile, check_scores


def _seed_list(seeds) -> list[int]:
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("need at least one seed (seeds=1, or a list of seeds)")
    return seeds


def _train(dataset, seed: int, *, epochs: int, model: str, width: int, batch_size: int, lr: float,
           optimizer: str, device, callbacks=(), progress: bool = False):
    """A fresh ``model`` (init seeded by ``seed``) trained ``epochs`` epochs on all of ``dataset``
    with cross-entropy only, feeding ``callbacks``; ``epochs=0`` returns the initial model."""
    import torch

    from kdprune.loaders import build
    from kdprune.loss import KDLoss
    from kdprune.models import build_model
    from kdprune.train.loop import fit

    torch.manual_seed(seed)
    net = build_model(model, dataset.num_classes, dataset.image_shape[2], width=width).to(device)
    if epochs > 0:
        loader = build("torch", dataset, np.arange(len(dataset)), batch_size=batch_size, train=True,
                       seed=seed, device=device, drop_last=False)
        fit(net, loader, epochs=epochs, lr=lr, loss_fn=KDLoss(alpha=0.0, temperature=1.0),
            optimizer=optimizer, callbacks=callbacks, device=device, progress=progress,
            desc=f"score seed {seed}")
    return net


def _one_seed(method: str, dataset, seed: int, epochs: int, train_kw: dict, k: int | None) -> np.ndarray:
    entry = SCORE_METHODS[method]
    if entry.info["kind"] == "dynamics":
        if epochs < 1:
            raise ConfigError(f"{method} is recorded while training: it needs epochs >= 1")
        rec = SCORE_METHODS.load(method).for_run(len(dataset), epochs)
        _train(dataset, seed, epochs=epochs, callbacks=(rec,), **train_kw)
        return rec.finalize()
    net = _train(dataset, seed, epochs=epochs, **train_kw)
    options = {"k": k, "seed": seed}
    extra = {name: options[name] for name in entry.info.get("options", ())}
    return SCORE_METHODS.load(method)(net, dataset.images, dataset.labels, device=train_kw["device"], **extra)


def _teacher(method: str, dataset, store) -> tuple[np.ndarray, dict]:
    from kdprune.provenance import require_same

    if store is None:
        raise ConfigError(f"{method} reads the teacher's logits: pass a teacher store (--store PATH, "
                          "made with `kdprune logits`)")
    if not hasattr(store, "gather"):
        from kdprune.store import TeacherStore
        store = TeacherStore.open(store)
    require_same(store.meta, dataset, what="the teacher store",
                 fix="recompute it with `kdprune logits` on this dataset")
    scores = SCORE_METHODS.load(method)(store, dataset.labels, method.split("-", 1)[1])
    return scores, {"store_views": int(store.views), "teacher": store.meta.get("teacher")}


def compute_score(method: str, dataset, *, epochs: int | None = None, seeds=1, model: str = "cnn",
                  width: int = 32, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
                  device="cpu", store=None, k: int | None = None, progress: bool = False) -> ScoreFile:
    """Compute score ``method`` (a name of :data:`kdprune.registry.SCORE_METHODS`) for every sample of
    ``dataset`` (a kdprune dataset with ``.images``, ``.labels``, ``.fingerprint``).

    ``epochs`` of training per seed (default: the method's, e.g. 2 for EL2N, 0 = at init for GraNd);
    ``seeds`` an int K (seeds 0..K-1) or a list, whose scores are averaged;
    ``model``/``width``/``batch_size``/``lr``/``optimizer`` configure the scoring model; ``store`` a
    TeacherStore (or its path) for the teacher methods; ``k`` the number of prototypes (default: the
    number of classes). Returns ``ScoreFile(scores float32[N], meta)``, ready for
    :func:`kdprune.save_scores`.

    >>> import kdprune
    >>> data = kdprune.load_dataset("synthetic", num_samples=64)
    >>> kdprune.compute_score("random", data).scores.shape
    (64,)
    """
    kind = SCORE_METHODS[method].info["kind"]
    seeds = _seed_list(seeds)
    t0 = time.perf_counter()
    meta = {"method": method, "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint}
    if kind == "random":
        scores = np.random.default_rng(seeds[0]).random(len(dataset)).astype(np.float32)
        meta["seeds"] = seeds[:1]
    elif kind == "teacher":
        scores, extra = _teacher(method, dataset, store)
        meta.update(extra)
    else:
        epochs = SCORE_METHODS[method].info["epochs"] if epochs is None else int(epochs)
        if epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {epochs}")
        train_kw = dict(model=model, width=width, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        device=str(device), progress=progress)
        scores = average([_one_seed(method, dataset, s, epochs, train_kw, k) for s in seeds])
        meta.update({"epochs": epochs, "seeds": seeds, "model": model, "width": width,
                     "batch_size": batch_size, "lr": lr, "optimizer": optimizer})
        if method == "prototypes":
            meta.update({"k": k or dataset.num_classes, "embedding": "supervised" if epochs else "random-init"})
    meta["wall_time_s"] = time.perf_counter() - t0
    return ScoreFile(check_scores(scores, what=f"{method} scores"), meta)
