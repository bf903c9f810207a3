"""Loaders that read only the kept sample ids: ``build(backend, source, ids, ...)``.

Backends: ``"torch"`` (any map-style dataset through a DataLoader with workers, or an in-memory
dataset; always available), ``"ffcv"`` and ``"dali"`` (optional extras, imported only when asked for,
reading a dataset converted with ``kdprune.convert`` / ``kdprune convert --format ffcv|dali``).
Images may have any size: every backend cuts the same crop of (seed, view, id), relative to each
image's own size.
"""
from __future__ import annotations

import os

from kdprune.errors import ConfigError, DataError
from kdprune.loaders.batch import Batch, normalize
from kdprune.registry import LOADER_BACKENDS

__all__ = ["Batch", "build", "normalize", "BACKENDS"]

BACKENDS = LOADER_BACKENDS.names()


def build(backend: str, source, ids, *, batch_size: int, train: bool, seed: int = 0, device="cpu",
          distributed=None, drop_last: bool = False, **kwargs):
    """An iterable of :class:`Batch` over exactly ``ids`` of ``source``, with ``len()`` and
    ``set_epoch(e)``: each epoch serves every id once (per rank under DDP: disjoint equal shards).

    ``source``: for ``"torch"`` any map-style dataset whose item is ``(x, y)`` (kdprune's datasets,
    torchvision datasets, Hugging Face datasets in torch format, your own class); for
    ``"ffcv"``/``"dali"`` the path of a converted dataset, or the dataset itself with ``path=`` the
    conversion (then a conversion made from other data is refused as stale). ``ids``: an IndexSet
    (one made for another dataset is refused) or an id array; None means every sample (evaluation).
    Keywords: ``augment`` (an :class:`~kdprune.data.Augment`, applied in training as view
    ``epoch % views``), ``views``, ``image_size`` (int or (H, W): evaluation's resize + centre crop,
    and the training crop's size when ``augment`` has none; needed for images of different sizes),
    ``workers`` (DataLoader processes, FFCV or DALI threads), ``shuffle`` (default ``train``; False
    serves the ids in increasing order, still with ``train``'s augmented views), ``dtype``
    (``"float32"``, default: batches in [-1, 1]; ``"uint8"``: grey levels, a quarter of the bytes, which
    :func:`normalize` turns into the float batch on the GPU, as FFCV's own pipelines do).

    >>> import kdprune, torch
    >>> from kdprune.loaders import build
    >>> data = kdprune.load_dataset("synthetic", num_samples=100)
    >>> loader = build("torch", data, None, batch_size=32, train=False)
    >>> [len(b.ids) for b in loader]
    [32, 32, 32, 4]
    """
    common = dict(batch_size=batch_size, train=train, seed=seed, device=device, distributed=distributed,
                  drop_last=drop_last)
    if backend == "torch":
        from kdprune.loaders.torch_backend import make_torch_loader
        kwargs.pop("path", None)
        return make_torch_loader(source, ids, **common, **kwargs)
    path = kwargs.pop("path", None)
    if isinstance(source, (str, os.PathLike)):
        path, source = os.fspath(source), None
    check_source(backend, path)
    require_backend(backend)
    if backend == "ffcv":
        from kdprune.loaders.ffcv_backend import FFCVLoader
        return FFCVLoader(path, ids, source=source, **common, **kwargs)
    from kdprune.loaders.dali_backend import DALILoader
    return DALILoader(path, ids, source=source, **common, **kwargs)


def check_source(backend: str, path) -> None:
    """Refuse an unknown backend, and FFCV or DALI without the path of a converted dataset, before
    anything is read or written."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "torch" and path is None:
        raise DataError(f"the {backend} backend reads a converted dataset: run `kdprune convert --format "
                        f"{backend} --out PATH` and pass its path (path=PATH, --converted PATH or --train-data PATH)")


def require_backend(backend: str) -> None:
    """Import the optional library a backend needs, or say how to install it."""
    import torch
    # DALI's replayed crop runs in numba (loaders/crop_kernel.py), which FFCV depends on anyway
    modules, extra = {"ffcv": (("ffcv",), "ffcv"), "dali": (("nvidia.dali", "numba"), "dali")}[backend]
    threads = torch.get_num_threads()
    try:
        for module in modules:
            __import__(module)
    except ImportError as err:
        raise ConfigError(f"the {backend} backend needs {module}, which does not import ({err}); install it "
                          f"with `pip install 'kdprune[{extra}]'` (or `make install`)") from err
    finally:
        torch.set_num_threads(threads)  # importing ffcv sets torch's global thread count to 1
