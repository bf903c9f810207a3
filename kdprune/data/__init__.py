"""Datasets: Fashion-MNIST (IDX), CIFAR-10/100 (python batches), synthetic; plus normalisation and the
deterministic augmentation the teacher store and the loaders share."""
from __future__ import annotations

import numpy as np
import torch

from kdprune.data.augment import Augment
from kdprune.data.cifar import load_cifar
from kdprune.data.dataset import ArrayDataset, fingerprint_arrays
from kdprune.data.idx import load_fashion_mnist
from kdprune.data.synthetic import synthetic
from kdprune.errors import DataError

__all__ = ["ArrayDataset", "Augment", "load_dataset", "load_fashion_mnist", "load_cifar", "synthetic",
           "fingerprint_arrays", "to_float"]

from kdprune.catalog import DATASETS  # noqa: E402  (re-exported)


def load_dataset(name: str, split: str = "train", data_dir: str | None = None, *,
                 num_samples: int = 2000, num_classes: int = 10, shape=(28, 28, 1), seed: int = 0) -> ArrayDataset:
    """Load a dataset by name: ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``synthetic``.

    For ``synthetic``, the test split is the same task (class templates from ``seed``) with other
    samples, a sixth the size.

    >>> import kdprune
    >>> train = kdprune.load_dataset("synthetic", "train", num_samples=32)
    >>> len(train), train.images.shape, train.labels[:5].tolist()
    (32, (32, 28, 28, 1), [2, 1, 5, 1, 0])
    >>> len(kdprune.load_dataset("synthetic", "test", num_samples=32))
    10
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DataError(f"{name} needs --data-dir pointing at the extracted python batch files")
        return load_cifar(name, split, data_dir)
    if name == "synthetic":
        if split == "test":
            return synthetic(max(num_samples // 6, num_classes), num_classes, shape, seed, sample_seed=seed + 1)
        return synthetic(num_samples, num_classes, shape, seed)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def to_float(images: np.ndarray | torch.Tensor, out: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` scaled to [-1, 1] (the models' input).

    One channel comes out contiguous NCHW, as FFCV's decode writes it (a permuted view of ``[N, H, W,
    1]`` has the same bytes but strides that also read as channels-last, and conv picks other kernels
    on them). Three channels keep the permuted view's channels-last strides (converted in the
    images' own byte order): an NCHW copy took 2x as long on 32 px images (a transposing copy).

    ``out``: contiguous float32 memory of the images' shape ``[N, H, W, C]`` to write into (the FFCV and
    DALI loaders pass pooled memory they use again); the result is then a view of it, with the
    same values and strides as without."""
    x = torch.as_tensor(images)
    if out is not None:
        out = torch.as_tensor(out)
        if out.shape != x.shape or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"to_float(out=) takes contiguous float32 of the images' shape {tuple(x.shape)}, "
                             f"got {out.dtype} {tuple(out.shape)}")
        x = out.copy_(x)
    if x.shape[3] == 1:
        x = x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
    else:
        x = x.permute(0, 3, 1, 2)
    return (x if out is not None else x.float()).div_(127.5).sub_(1.0)
