"""Pruning scores: one float32[N] per dataset, oriented so that higher = harder (more informative).

``compute_score(method, dataset, ...)`` computes any of :data:`METHODS`; ``save_scores`` /
``load_scores`` write and read them with their provenance; ``kdprune.prune`` turns them into an
:class:`~kdprune.IndexSet`.

| method | what | cost |
| --- | --- | --- |
| ``el2n`` | ``||softmax - onehot||`` in the last of ``epochs`` epochs (Paul et al. 2021), from the loss's own per-sample ``el2n`` | the training run |
| ``grand`` | per-sample gradient norm over all weights after ``epochs`` epochs (0 = at init), ``torch.func`` | training + one vmap'd backward per sample |
| ``grand-last`` | the same over the head only: closed form ``||p - y|| * ||[h, 1]||`` | training + one forward |
| ``forgetting`` | forgetting events over ``epochs`` epochs (Toneva et al. 2019) | the training run |
| ``aum`` | minus the area under the margin (Pleiss et al. 2020) | the training run |
| ``prototypes`` | distance to the nearest k-means centroid of ``model.embed`` (Sorscher et al. 2022; supervised stand-in embedding, see :mod:`.prototypes`) | training + one forward + k-means |
| ``teacher-el2n`` / ``teacher-entropy`` / ``teacher-margin`` | from the stored teacher logits | one pass over the store |
| ``random`` | uniform [0, 1), seeded | free |

Training-dynamics scores are recorders fed by :func:`kdprune.train.fit` (see :mod:`.dynamics`); each
seed trains a fresh model (seeded init and order) and the seeds' scores are averaged. The models are
trained with their own short schedule (``fit``'s one-cycle over ``epochs``), not stopped early in a
long run as in Paul et al.; ``epochs`` is what makes a score "early".
"""
from __future__ import annotations

import time

import numpy as np

from kdprune.errors import ConfigError, StoreError
from kdprune.scores.io import ScoreFile, check_scores, load_scores, save_scores

__all__ = ["METHODS", "DEFAULT_EPOCHS", "compute_score", "save_scores", "load_scores", "ScoreFile",
           "check_scores"]

TEACHER_METHODS = ("teacher-el2n", "teacher-entropy", "teacher-margin")
METHODS = ("el2n", "grand", "grand-last", "forgetting", "aum", "prototypes", "random") + TEACHER_METHODS
# epochs of training before (or, for the dynamics, during) scoring when the caller does not say
DEFAULT_EPOCHS = {"el2n": 2, "grand": 0, "grand-last": 0, "forgetting": 5, "aum": 5, "prototypes": 1}


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
    from kdprune.models import build_model

    torch.manual_seed(seed)
    net = build_model(model, dataset.num_classes, dataset.image_shape[2], width=width).to(device)
    if epochs > 0:
        from kdprune.loss import KDLoss
        from kdprune.train import fit

        loader = build("torch", dataset, np.arange(len(dataset)), batch_size=batch_size, train=True,
                       seed=seed, device=device, drop_last=False)
        fit(net, loader, epochs=epochs, lr=lr, loss_fn=KDLoss(alpha=0.0, temperature=1.0),
            optimizer=optimizer, callbacks=callbacks, device=device, progress=progress,
            desc=f"score seed {seed}")
    return net


def _one_seed(method: str, dataset, seed: int, epochs: int, train_kw: dict, k: int | None) -> np.ndarray:
    from kdprune.scores import dynamics

    n = len(dataset)
    if method in ("el2n", "forgetting", "aum"):
        if epochs < 1:
            raise ConfigError(f"{method} is recorded while training: it needs epochs >= 1")
        rec = {"el2n": lambda: dynamics.EL2NRecorder(n, epoch=epochs - 1),
               "forgetting": lambda: dynamics.ForgettingRecorder(n),
               "aum": lambda: dynamics.AUMRecorder(n)}[method]()
        _train(dataset, seed, epochs=epochs, callbacks=(rec,), **train_kw)
        return rec.finalize()
    net = _train(dataset, seed, epochs=epochs, **train_kw)
    device = train_kw["device"]
    if method == "grand":
        from kdprune.scores.grand import grand_scores
        return grand_scores(net, dataset.images, dataset.labels, device=device)
    if method == "grand-last":
        from kdprune.scores.grand import grand_last_layer
        return grand_last_layer(net, dataset.images, dataset.labels, device=device)
    if method == "prototypes":
        from kdprune.scores.prototypes import embed_all, prototype_scores
        return prototype_scores(embed_all(net, dataset.images, device=device), k or dataset.num_classes, seed=seed)
    raise ConfigError(f"unknown score method {method!r}; choose one of {', '.join(METHODS)}")


def _teacher(method: str, dataset, store) -> tuple[np.ndarray, dict]:
    from kdprune.scores.teacher import teacher_scores

    if store is None:
        raise ConfigError(f"{method} reads the teacher's logits: pass a teacher store (--store PATH, "
                          "made with `kdprune logits`)")
    if isinstance(store, str):
        from kdprune.store import TeacherStore
        store = TeacherStore.open(store)
    theirs = store.meta.get("dataset_fingerprint")
    if theirs and theirs != dataset.fingerprint:
        raise StoreError(f"the teacher store was written for dataset {theirs}, not {dataset.fingerprint}; "
                         "recompute it with `kdprune logits` on this dataset")
    scores = teacher_scores(store, dataset.labels, method.split("-", 1)[1])
    return scores, {"store_views": int(store.views), "teacher": store.meta.get("teacher")}


def compute_score(method: str, dataset, *, epochs: int | None = None, seeds=1, model: str = "cnn",
                  width: int = 32, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
                  device="cpu", store=None, k: int | None = None, progress: bool = False) -> ScoreFile:
    """Compute ``method`` (one of :data:`METHODS`) on ``dataset`` (an :class:`~kdprune.data.ArrayDataset`).

    ``epochs`` (default :data:`DEFAULT_EPOCHS`) of training per seed; ``seeds`` an int K (seeds 0..K-1)
    or a list; ``model``/``width``/``batch_size``/``lr``/``optimizer`` configure the scoring model;
    ``store`` a TeacherStore (or its path) for the teacher methods; ``k`` the number of prototypes
    (default: the number of classes). Returns ``ScoreFile(scores float32[N], meta)``, ready for
    :func:`save_scores`.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown score method {method!r}; choose one of {', '.join(METHODS)}")
    seeds = _seed_list(seeds)
    t0 = time.perf_counter()
    meta = {"method": method, "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint}
    if method == "random":
        scores = np.random.default_rng(seeds[0]).random(len(dataset)).astype(np.float32)
        meta["seeds"] = seeds[:1]
    elif method in TEACHER_METHODS:
        scores, extra = _teacher(method, dataset, store)
        meta.update(extra)
    else:
        epochs = DEFAULT_EPOCHS[method] if epochs is None else int(epochs)
        if epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {epochs}")
        train_kw = dict(model=model, width=width, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        device=str(device), progress=progress)
        from kdprune.scores.dynamics import average
        scores = average([_one_seed(method, dataset, s, epochs, train_kw, k) for s in seeds])
        meta.update({"epochs": epochs, "seeds": seeds, "model": model, "width": width,
                     "batch_size": batch_size, "lr": lr, "optimizer": optimizer})
        if method == "prototypes":
            meta.update({"k": k or dataset.num_classes, "embedding": "supervised" if epochs else "random-init"})
    meta["wall_time_s"] = time.perf_counter() - t0
    return ScoreFile(check_scores(scores, what=f"{method} scores"), meta)
