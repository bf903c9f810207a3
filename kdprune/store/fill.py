"""Fill a teacher store: run the teacher over every sample (and every augmented view) once.

Resumable: a killed run leaves ``PATH.partial``; calling again with the same arguments skips the
chunks already finished. A store already published at ``PATH`` with the same parameters is returned
as it is.
"""
from __future__ import annotations

import os

import torch

from kdprune.errors import StoreError
from kdprune.store import format as fmt
from kdprune.store.reader import TeacherStore
from kdprune.store.format import new_params


def describe_model(model: torch.nn.Module) -> dict:
    """A JSON description of a teacher: class, parameter count and a hash of its weights, so a store
    is never resumed or reused with another teacher's outputs."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
            "weights_sha256": h.hexdigest()[:16]}


@torch.no_grad()
def write_teacher_logits(model: torch.nn.Module, dataset, path: str, *, views: int = 1, augment=None,
                         batch_size: int = 512, dtype: str = "float16", topk: int | None = None,
                         device: str = "cpu", teacher: dict | str | None = None,
                         progress: bool = True) -> TeacherStore:
    """Teacher logits of every sample of ``dataset`` (an ArrayDataset) into a store at ``path``.

    View ``v`` of sample ``i`` is the model's output on ``augment.apply(x, v, [i])``; with ``views > 1``
    and no ``augment`` the default :class:`~kdprune.data.Augment` is used. With one view and no
    ``augment`` the teacher sees the clean images and ``meta["augment"]`` is None.
    """
    from kdprune.data import Augment, to_float

    if views < 1:
        raise StoreError(f"views must be >= 1, got {views}")
    if augment is None and views > 1:
        augment = Augment()
    teacher = teacher if teacher is not None else describe_model(model)
    kwargs = dict(views=views, dtype=dtype, topk=topk, dataset_fingerprint=dataset.fingerprint,
                  teacher=teacher, augment=augment, dataset_name=getattr(dataset, "name", None))
    existing = _existing(path, len(dataset), dataset.num_classes, kwargs)
    if existing is not None:
        return existing
    model = model.to(device).eval()
    writer = TeacherStore.create(path, len(dataset), dataset.num_classes, **kwargs)
    with writer:
        todo = [(v, writer.missing(v)) for v in range(views)]
        bar = _bar(sum(len(ids) for _, ids in todo), progress, resumed=writer.resumed)
        for view, ids in todo:
            for start in range(0, len(ids), batch_size):
                batch = ids[start:start + batch_size]
                x = to_float(_images(dataset, batch)).to(device)
                if augment is not None:
                    x = augment.apply(x, view, batch)
                writer.write(batch, model(x).float().cpu(), view=view)
                bar.update(len(batch))
        bar.close()
    return TeacherStore.open(path, expect_fingerprint=dataset.fingerprint)


def _images(dataset, ids):
    """uint8 ``[B, H, W, C]`` of ``ids``: indexed in memory, or decoded one file at a time from a JPEG folder."""
    if hasattr(dataset, "images"):
        return dataset.images[ids]
    import numpy as np
    return np.stack([dataset.decode(int(i)) for i in ids])


def _existing(path: str, num_samples: int, num_classes: int, kwargs: dict) -> TeacherStore | None:
    """The published store at ``path`` when it was made with these parameters; an error when it was not."""
    if not os.path.exists(path):
        return None
    store = TeacherStore.open(path)
    kwargs = {k: v for k, v in kwargs.items() if k != "dataset_name"}  # a name, not a parameter
    want = new_params(num_samples, num_classes, chunk_rows=store.meta["chunk_rows"], **kwargs)
    diff = [k for k in fmt.PARAM_KEYS if store.meta.get(k) != want.get(k)]
    if diff:
        raise StoreError(f"a different teacher store already exists at {path} (differs in {', '.join(diff)}); "
                         "delete it or choose another output path")
    return store


def _bar(total: int, enabled: bool, resumed: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="teacher logits" + (" (resumed)" if resumed else ""), unit="sample",
                disable=not enabled, dynamic_ncols=True)


def checkpoint_description(path: str) -> dict:
    """Teacher description for a checkpoint file: its path and a content hash (so a resume or a re-run
    with another checkpoint is refused instead of mixing two teachers)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"checkpoint": os.path.abspath(path), "sha256": h.hexdigest()[:16]}


__all__ = ["write_teacher_logits", "describe_model", "checkpoint_description"]
