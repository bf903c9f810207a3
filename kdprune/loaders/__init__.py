"""Loaders that read only the kept sample ids: ``build(backend, source, ids, ...)``.

Backends: ``"torch"`` (in-memory arrays, always available), ``"ffcv"`` and ``"dali"`` (optional
extras, imported only when asked for).
"""
from __future__ import annotations

from kdprune.errors import ConfigError
from kdprune.loaders.batch import Batch

__all__ = ["Batch", "build", "BACKENDS"]

BACKENDS = ("torch", "ffcv", "dali")


def build(backend: str, source, ids, *, batch_size: int, train: bool, seed: int = 0, device="cpu",
          distributed=None, drop_last: bool = False, **kwargs):
    """An iterable of :class:`Batch` over exactly ``ids`` (an IndexSet or an id array) of ``source``,
    with ``len()`` and ``set_epoch(e)``. See each backend for ``source`` and extra keywords
    (``augment``, ``views``)."""
    if backend == "torch":
        from kdprune.loaders.torch_backend import ArrayLoader
        return ArrayLoader(source, ids, batch_size=batch_size, train=train, seed=seed, device=device,
                           distributed=distributed, drop_last=drop_last, **kwargs)
    raise ConfigError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")
