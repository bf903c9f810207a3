"""A deterministic synthetic image dataset of any size, class count and shape.

Each class has a smooth random template; a sample is its class template plus per-sample noise and a
random shift, so a small CNN can learn it (tests of training see accuracy rise) yet it is not trivial.
"""
from __future__ import annotations

import numpy as np

from kdprune.data.dataset import ArrayDataset
from kdprune.errors import DataError


def synthetic(num_samples: int, num_classes: int = 10, shape=(28, 28, 1), seed: int = 0,
              noise: float = 0.35, sample_seed: int | None = None) -> ArrayDataset:
    """``num_samples`` uint8 images of ``shape`` (H, W, C) in ``num_classes`` balanced classes.

    ``seed`` fixes the task (the class templates); ``sample_seed`` (default ``seed``) draws the samples,
    so a test split is the same task with other samples.
    """
    if num_samples < 1 or num_classes < 2:
        raise DataError(f"synthetic data needs num_samples >= 1 and num_classes >= 2, got {num_samples}, {num_classes}")
    h, w, c = shape
    coarse = np.random.default_rng(seed).standard_normal((num_classes, max(h // 4, 1), max(w // 4, 1), c))
    rng = np.random.default_rng([seed, seed if sample_seed is None else sample_seed])
    templates = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :h, :w, :]
    if templates.shape[1] < h or templates.shape[2] < w:
        templates = np.resize(templates, (num_classes, h, w, c))
    labels = np.arange(num_samples) % num_classes
    rng.shuffle(labels)
    images = np.empty((num_samples, h, w, c), dtype=np.uint8)
    chunk = 4096
    for start in range(0, num_samples, chunk):
        lab = labels[start:start + chunk]
        x = templates[lab] + noise * 2.5 * rng.standard_normal((len(lab), h, w, c))
        shifts = rng.integers(-2, 3, size=2)
        x = np.roll(x, tuple(shifts), axis=(1, 2))
        images[start:start + chunk] = np.clip(128 + 40 * x, 0, 255).astype(np.uint8)
    return ArrayDataset(f"synthetic-{num_samples}x{num_classes}-{h}x{w}x{c}-s{seed}"
                        + ("" if sample_seed is None else f"-draw{sample_seed}"), images,
                        labels.astype(np.int64), num_classes)
