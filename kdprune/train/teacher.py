"""Where the student's teacher logits come from: a :class:`~kdprune.TeacherStore` or a live module."""
from __future__ import annotations

import torch

from kdprune.errors import StoreError


class StoredTeacher:
    """Teacher logits gathered by sample id from a store; epoch ``e`` reads view ``e % views``, the
    view whose augmentation the loader replays for that epoch."""

    def __init__(self, store, dataset_fingerprint: str | None = None, num_samples: int | None = None):
        fp = store.meta.get("dataset_fingerprint")
        if dataset_fingerprint and fp and fp != dataset_fingerprint:
            raise StoreError(f"the teacher store was written for dataset {fp}, but training uses "
                             f"{dataset_fingerprint}; recompute it with `kdprune logits`")
        if num_samples is not None and store.num_samples != num_samples:
            raise StoreError(f"the teacher store holds {store.num_samples} samples but the dataset has "
                             f"{num_samples}; recompute it with `kdprune logits`")
        self.store = store

    @property
    def views(self) -> int:
        return self.store.views

    def __call__(self, batch, epoch: int) -> torch.Tensor:
        logits = self.store.gather(batch.ids.cpu(), view=epoch % self.store.views)
        return logits.to(batch.x.device, non_blocking=True)


class OnlineTeacher:
    """A teacher module run under no_grad on the student's own batch (same augmentation by construction)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()
        self.views = None

    @torch.no_grad()
    def __call__(self, batch, epoch: int) -> torch.Tensor:
        return self.module(batch.x)
