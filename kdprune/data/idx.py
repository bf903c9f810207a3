"""Fashion-MNIST (and MNIST-format) IDX files, validated before use."""
from __future__ import annotations

import gzip
import os

import numpy as np

from kdprune.data.dataset import ArrayDataset
from kdprune.errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
APT_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir"
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


def _find(data_dir: str, stem: str) -> str:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}: {APT_HINT}")


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path} ({err}); the file is corrupted or truncated: {APT_HINT}") from err


def read_idx(path: str, magic: int) -> np.ndarray:
    """Read one IDX file, checking its magic number and that its size matches its header."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(f"{path}: magic number {got}, expected {magic}; this is not the IDX file it is named for")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says shape {dims} ({expected} bytes) but the file has {len(raw)} bytes; "
            f"it is truncated or corrupted: {APT_HINT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> ArrayDataset:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as an :class:`ArrayDataset`."""
    data_dir = data_dir or os.environ.get("KDPRUNE_FASHION_MNIST", DEFAULT_DIR)
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    if not os.path.isdir(data_dir):
        raise DataError(f"Fashion-MNIST directory {data_dir} does not exist: {APT_HINT}")
    img_stem, lbl_stem, count = _FILES[split]
    images = read_idx(_find(data_dir, img_stem), _IMAGE_MAGIC)
    labels = read_idx(_find(data_dir, lbl_stem), _LABEL_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST {split} images must be [N, 28, 28], got {list(images.shape)}")
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    if len(images) != count:
        raise DataError(f"Fashion-MNIST {split}: expected {count} samples, found {len(images)}: {APT_HINT}")
    if labels.max() >= 10:
        raise DataError(f"Fashion-MNIST {split}: label {labels.max()} out of range [0, 10)")
    return ArrayDataset(f"fashion-mnist/{split}", images.copy(), labels.astype(np.int64), 10,
                        classes=list(FASHION_CLASSES))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (used by tests and by users making small fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for d in array.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(array.tobytes())
