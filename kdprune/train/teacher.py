"""Where the student's teacher logits come from: a :class:`~kdprune.TeacherStore` or a live module.

:func:`as_teacher` turns what a user passes as ``teacher=`` (a store, an ``nn.Module``, or one of the
classes here) into the callable ``teacher(batch, epoch) -> logits`` the trainer calls.
"""
from __future__ import annotations

import torch

from kdprune.errors import ConfigError, StoreError


class StoredTeacher:
    """Teacher logits gathered by sample id from a store; epoch ``e`` reads view ``e % views``, the
    view whose augmentation the loader replays for that epoch. ``dataset`` (a dataset, its
    fingerprint, or a ``(fingerprint, name)`` pair) is checked against the dataset the store was
    written for."""

    def __init__(self, store, dataset=None, num_samples: int | None = None, num_classes: int | None = None):
        from kdprune.provenance import require_same

        require_same(store, dataset, what=f"the teacher store {store.path}",
                     fix="recompute the teacher logits on this dataset (kdprune.write_teacher_logits or "
                         "`kdprune logits`)")
        if num_samples is not None and store.num_samples != num_samples:
            raise StoreError(f"the teacher store holds {store.num_samples} samples but the dataset has "
                             f"{num_samples}; recompute it with `kdprune logits`")
        if num_classes is not None and store.num_classes != num_classes:
            raise StoreError(f"the teacher store holds logits over {store.num_classes} classes but the dataset "
                             f"has {num_classes}; recompute it with `kdprune logits` for this dataset")
        # every step gathers random rows: map them all once instead of faulting pages in during training
        self.store = store.prefault()

    @property
    def views(self) -> int:
        return self.store.views

    # the trainer may run this one batch ahead in a thread: gathering is host work (memory-mapped reads
    # in C++) that overlaps the device's step instead of adding to it
    prefetch = True

    def __call__(self, batch, epoch: int) -> torch.Tensor:
        cuda = batch.x.is_cuda
        logits = self.store.gather(batch.ids.cpu(), view=epoch % self.store.views, pin_memory=cuda)
        return logits.to(batch.x.device, non_blocking=cuda)


class OnlineTeacher:
    """A teacher module run under no_grad (in eval mode) on the student's own batch, so it sees the
    same augmentation by construction; it costs a teacher forward pass per step."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.views = None

    @torch.no_grad()
    def __call__(self, batch, epoch: int) -> torch.Tensor:
        return self.module(batch.x)


def as_teacher(teacher, *, device=None, dataset=None):
    """The trainer's teacher for what a user passes: None (no distillation), a
    :class:`~kdprune.TeacherStore` (read by sample id; checked against ``dataset`` when given), an
    ``nn.Module`` (run on each batch: an :class:`OnlineTeacher`, moved to ``device``), or a
    :class:`StoredTeacher` / :class:`OnlineTeacher` as it is.

    >>> import torch
    >>> from kdprune.train.teacher import as_teacher
    >>> type(as_teacher(torch.nn.Linear(4, 2))).__name__
    'OnlineTeacher'
    """
    if teacher is None or isinstance(teacher, (StoredTeacher, OnlineTeacher)):
        return teacher
    from kdprune.store import TeacherStore

    if isinstance(teacher, TeacherStore):
        return StoredTeacher(teacher, dataset)
    if isinstance(teacher, torch.nn.Module):
        return OnlineTeacher(teacher.to(device) if device is not None else teacher)
    raise ConfigError(f"teacher must be a TeacherStore (kdprune.write_teacher_logits), an nn.Module or None, "
                      f"got {type(teacher).__name__}")
