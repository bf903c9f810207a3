"""Where the student's teacher logits come from: a :class:`~kdprune.TeacherStore` or a live module."""
from __future__ import annotations

import torch

from kdprune.errors import StoreError


class StoredTeacher:
    """Teacher logits gathered by sample id from a store; epoch ``e`` reads view ``e % views``, the
    view whose augmentation the loader replays for that epoch."""

    def __init__(self, store, dataset_fingerprint: str | None = None, num_samples: int | None = None,
                 num_classes: int | None = None):
        fp = store.meta.get("dataset_fingerprint")
        if dataset_fingerprint and fp and fp != dataset_fingerprint:
            raise StoreError(f"the teacher store was written for dataset {fp}, but training uses "
                             f"{dataset_fingerprint}; recompute it with `kdprune logits`")
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
