"""Deterministic train-time augmentation: the view ``v`` of sample ``i`` under ``seed``.

The crop box and flip of (seed, view, id) come from a counter-based hash, not from a stateful RNG, so
the teacher (writing view v of its store) and any loader (replaying view ``epoch % views``), in any
process, on any backend, in any order, draw exactly the same augmentation. This is what lets a store
of V teacher views stand in for an online teacher (the FKD idea, made general).

The crop follows torchvision's RandomResizedCrop (area in ``scale``, aspect ratio in ``ratio``,
log-uniform), with a centre-crop fallback after 10 tries; the flip is horizontal with probability 1/2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def uniforms(seed: int, view: int, ids: np.ndarray, count: int) -> np.ndarray:
    """``[len(ids), count]`` float64 uniforms in [0, 1), a pure function of (seed, view, id, column)."""
    ids = np.asarray(ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.uint64(seed) ^ (np.uint64(view) << np.uint64(40))) ^ ids)
        cols = np.arange(count, dtype=np.uint64)
        bits = _splitmix64(key[:, None] * np.uint64(0x100000001B3) + cols[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Augment:
    """Random-resized-crop + flip parameters; ``to_dict``/``from_dict`` round-trip through a store header."""

    seed: int = 0
    scale: tuple = (0.35, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    out_size: tuple | None = None  # (H, W); None keeps the input size

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Augment":
        d = dict(d)
        for k in ("scale", "ratio", "out_size"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def boxes(self, view: int, ids: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Crop boxes ``[n, 4]`` (top, left, h, w) in pixels and flips ``[n]`` bool for (view, ids)."""
        tries = 10
        u = uniforms(self.seed, view, ids, 2 * tries + 3)
        area = height * width
        lo, hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        n = len(u)
        box = np.zeros((n, 4), dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        for t in range(tries):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 2 * t])
            aspect = np.exp(lo + (hi - lo) * u[:, 2 * t + 1])
            w = np.round(np.sqrt(target * aspect)).astype(np.int64)
            h = np.round(np.sqrt(target / aspect)).astype(np.int64)
            ok = (~done) & (w > 0) & (h > 0) & (w <= width) & (h <= height)
            box[ok, 2], box[ok, 3] = h[ok], w[ok]
            done |= ok
        box[~done, 2], box[~done, 3] = height, width  # fallback: the whole image
        box[:, 0] = np.floor(u[:, -3] * (height - box[:, 2] + 1)).astype(np.int64)
        box[:, 1] = np.floor(u[:, -2] * (width - box[:, 3] + 1)).astype(np.int64)
        flips = (u[:, -1] < 0.5) if self.flip else np.zeros(n, dtype=bool)
        return box, flips

    def apply(self, images: torch.Tensor, view: int, ids) -> torch.Tensor:
        """Augment a float batch ``[n, C, H, W]`` as view ``view`` of samples ``ids`` (bilinear)."""
        n, _, height, width = images.shape
        out_h, out_w = self.out_size or (height, width)
        ids = np.asarray(ids.cpu() if torch.is_tensor(ids) else ids, dtype=np.int64)
        box, flips = self.boxes(view, ids, height, width)
        return crop_resize(images, box, flips, (out_h, out_w))


def crop_resize(images: torch.Tensor, box: np.ndarray, flips: np.ndarray, out_hw) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w), flip where asked, resize to ``out_hw``, in one
    ``grid_sample`` call (an affine grid per sample, align_corners=False)."""
    n, _, height, width = images.shape
    box_t = torch.as_tensor(box, dtype=torch.float64)
    top, left, h, w = box_t.unbind(1)
    sx, sy = w / width, h / height
    cx = (2 * left + w) / width - 1
    cy = (2 * top + h) / height - 1
    sign = torch.where(torch.as_tensor(flips), -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta.to(images.dtype if images.is_floating_point() else torch.float32),
                         [n, images.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(images, grid.to(images.device), mode="bilinear", padding_mode="border",
                         align_corners=False)
