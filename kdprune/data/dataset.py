"""The in-memory dataset every reader returns."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from kdprune.errors import DataError


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A short content hash of the arrays (dtype, shape and bytes), stable across runs and machines."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


@dataclass
class ArrayDataset:
    """Images and labels held in memory.

    ``images`` is uint8 ``[N, H, W, C]`` (channels last, C = 1 for grey), ``labels`` int64 ``[N]`` in
    ``[0, num_classes)``. ``fingerprint`` identifies the content, so a teacher store, a score file or an
    IndexSet made from one dataset is refused on another.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    fingerprint: str = ""
    classes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(
                f"{self.name}: images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"{self.name}: {len(self.images)} images but labels of shape {self.labels.shape}"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), "
                f"found [{self.labels.min()}, {self.labels.max()}]"
            )
        if not self.fingerprint:
            self.fingerprint = fingerprint_arrays(self.images, self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """``(image uint8 [H, W, C], label)``: a map-style dataset, as torch's DataLoader takes it."""
        return self.images[i], int(self.labels[i])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        """Return ``ids`` as int64, raising a clear error if any is outside ``[0, len(self))``."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise DataError(
                f"{self.name}: sample ids must lie in [0, {len(self)}), found [{ids.min()}, {ids.max()}]; "
                "was the IndexSet made for another dataset?"
            )
        return ids
