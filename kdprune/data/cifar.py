"""CIFAR-10 / CIFAR-100 from the standard python-pickle batch files (users bring the files)."""
from __future__ import annotations

import os
import pickle

import numpy as np

from kdprune.data.dataset import ArrayDataset
from kdprune.errors import DataError

_LAYOUT = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "labels": b"labels", "meta": ("batches.meta", b"label_names"), "classes": 10,
                "folder": "cifar-10-batches-py"},
    "cifar100": {"train": ["train"], "test": ["test"], "labels": b"fine_labels",
                 "meta": ("meta", b"fine_label_names"), "classes": 100, "folder": "cifar-100-python"},
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The batch files hold only dicts, lists, bytes and numpy arrays; refuse anything else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _load_batch(path: str) -> dict:
    if not os.path.exists(path):
        raise DataError(f"CIFAR batch file {path} not found; download the python version of the dataset "
                        "and pass its folder with --data-dir")
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{path} is not a readable CIFAR batch file ({err}); it is corrupted or truncated") from err


def load_cifar(which: str, split: str, data_dir: str) -> ArrayDataset:
    """Read CIFAR-10 (``which="cifar10"``) or CIFAR-100 (``"cifar100"``) ``split`` from ``data_dir``.

    ``data_dir`` is the extracted folder (``cifar-10-batches-py``) or its parent.
    """
    if which not in _LAYOUT:
        raise DataError(f"unknown CIFAR variant {which!r}; use 'cifar10' or 'cifar100'")
    layout = _LAYOUT[which]
    if split not in ("train", "test"):
        raise DataError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    if os.path.isdir(os.path.join(data_dir, layout["folder"])):
        data_dir = os.path.join(data_dir, layout["folder"])
    images, labels = [], []
    for name in layout[split]:
        batch = _load_batch(os.path.join(data_dir, name))
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lab = np.asarray(batch[layout["labels"]], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"{name}: missing key {err} in a {which} batch file") from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise DataError(f"{name}: expected data [N, 3072] with N labels, got {data.shape} and {lab.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    classes = []
    meta_path = os.path.join(data_dir, layout["meta"][0])
    if os.path.exists(meta_path):
        classes = [c.decode() for c in _load_batch(meta_path).get(layout["meta"][1], [])]
    return ArrayDataset(f"{which}/{split}", np.ascontiguousarray(np.concatenate(images)),
                        np.concatenate(labels), layout["classes"], classes=classes)


def write_cifar_batch(path: str, images: np.ndarray, labels: np.ndarray, label_key: bytes = b"labels") -> None:
    """Write a batch file in the CIFAR python format (tests make tiny ones with this)."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1).astype(np.uint8)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key: [int(v) for v in labels]}, f)
