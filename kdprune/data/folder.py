"""A folder of JPEG images by class (``root/<class>/<file>.jpg``), read lazily, one file per sample.

Sample ids follow the sorted class names, then the sorted file names inside each class, so the same
folder always numbers its samples the same way. The fingerprint hashes each file's relative path,
size and label (not the pixels: hashing 20k JPEGs would cost more than reading them once), so a
renamed, added, removed or rewritten-with-another-size file makes every derived artefact stale.

Images may have any size: each is decoded at its own size (PIL), and the loaders crop it (a replayed
training view, or resize + centre crop in evaluation; ``kdprune.data.augment.crop_batch``).
The CLI's ``--dataset folder --data-dir ROOT`` means ``ROOT/train/<class>/`` and ``ROOT/val/<class>/``
(the ImageNet layout): :func:`load_folder_split`.
"""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np

from kdprune.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")


class FolderDataset:
    """JPEG files under ``root/<class>/``: ``paths``, ``labels`` int64, ``num_classes``, ``classes``,
    ``fingerprint``; ``read_bytes(i)`` and ``decode(i)`` (uint8 ``[H, W, 3]``) touch only sample i."""

    def __init__(self, root):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DataError(f"image folder {root} does not exist; pass a folder with one sub-folder per class")
        self.root = os.path.abspath(root)
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        rel, labels = [], []
        for label, cls in enumerate(self.classes):
            names = sorted(n for n in os.listdir(os.path.join(root, cls)) if n.endswith(EXTENSIONS))
            rel += [os.path.join(cls, n) for n in names]
            labels += [label] * len(names)
        if not rel:
            raise DataError(f"no JPEG files found under {root}/<class>/; expected files ending in .jpg or .jpeg")
        self.relpaths = rel
        self.paths = [os.path.join(self.root, r) for r in rel]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)
        self.sizes = np.asarray([os.path.getsize(p) for p in self.paths], dtype=np.int64)
        self.name = f"folder:{os.path.basename(self.root.rstrip('/'))}"
        self.fingerprint = _fingerprint(rel, self.sizes, self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def read_bytes(self, i: int) -> bytes:
        """The encoded file of sample ``i``."""
        with open(self.paths[i], "rb") as f:
            return f.read()

    def decode(self, i: int) -> np.ndarray:
        """Sample ``i`` as uint8 ``[H, W, 3]`` RGB, at the image's own size."""
        return decode_jpeg(self.read_bytes(i), self.paths[i])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """``(image uint8 [H, W, 3], label)``: a map-style dataset, as torch's DataLoader takes it."""
        return self.decode(int(i)), int(self.labels[i])

    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of sample 0 (other samples may have other sizes)."""
        return self.decode(0).shape


def load_folder_split(root, split: str = "train") -> FolderDataset:
    """``ROOT/train`` (``split="train"``) or ``ROOT/val`` (``"val"`` or ``"test"``) of an ImageNet-layout
    folder, each holding one sub-folder of JPEGs per class: what ``--dataset folder --data-dir ROOT``
    means in every command."""
    root = os.fspath(root)
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r} of image folder {root}; choose train or val")
    sub = os.path.join(root, "train" if split == "train" else "val")
    if not os.path.isdir(sub) and os.path.isdir(root):
        raise DataError(f"{root} has no {os.path.basename(sub)}/ folder: --dataset folder expects "
                        f"ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (the ImageNet layout)")
    return FolderDataset(sub)


def _fingerprint(relpaths, sizes, labels) -> str:
    h = hashlib.sha256()
    for r, s, y in zip(relpaths, sizes, labels):
        h.update(f"{r}\0{int(s)}\0{int(y)}\n".encode())
    return h.hexdigest()[:16]


def decode_jpeg(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Decode a JPEG to uint8 ``[H, W, 3]`` RGB with PIL, as a DataError if it is not one."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))  # writable, as torch.from_numpy wants
    except UnidentifiedImageError as err:
        raise DataError(f"{where} is not a readable JPEG (not an image file); remove or replace the file") from err
    except OSError as err:
        raise DataError(f"{where} is not a readable JPEG ({err}); remove or replace the file") from err


def write_jpeg_folder(root, num_samples: int, num_classes: int = 10, size=64, *,
                      seed: int = 0, quality: int = 90) -> FolderDataset:
    """Write a deterministic synthetic folder of ``num_samples`` RGB JPEGs in ``num_classes`` classes,
    for tests and throughput benchmarks; returns it opened. ``size``: one side for every image, or a
    ``(low, high)`` range from which each image draws its own height and width (images of any size,
    as in ImageNet)."""
    from PIL import Image

    from kdprune.data.synthetic import synthetic
    root = os.fspath(root)
    low, high = (size, size) if isinstance(size, int) else size
    # A small synthetic set upsampled: class structure survives, and images compress like photos
    # (smooth regions plus noise) rather than like pure noise, which would inflate decode cost.
    base = max(low // 8, 4)
    small = synthetic(num_samples, num_classes, (base, base, 3), seed)
    width = len(str(num_samples))
    for c in range(num_classes):
        os.makedirs(os.path.join(root, f"class_{c:03d}"), exist_ok=True)
    rng = np.random.default_rng(seed + 7)
    for i in range(num_samples):
        h, w = (low, low) if low == high else rng.integers(low, high + 1, size=2)
        img = Image.fromarray(small.images[i]).resize((int(w), int(h)), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(int(h), int(w), 3))
        path = os.path.join(root, f"class_{int(small.labels[i]):03d}", f"{i:0{width}d}.jpg")
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=quality)
    return FolderDataset(root)
