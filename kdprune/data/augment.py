"""Deterministic train-time augmentation: the view ``v`` of sample ``i`` under ``seed``.

The crop box and flip of (seed, view, id) come from a counter-based hash, not from a stateful RNG, so
the teacher (writing view v of its store) and any loader (replaying view ``epoch % views``), in any
process, on any backend, in any order, draw exactly the same augmentation. This is what lets a store
of V teacher views stand in for an online teacher (the FKD idea, made general).

The crop follows torchvision's RandomResizedCrop (area in ``scale``, aspect ratio in ``ratio``,
log-uniform), with a whole-image fallback after 10 tries; the flip is horizontal with probability 1/2.
Boxes are drawn relative to each image's own size, so images of any size work: :func:`crop_batch`
turns decoded images of any sizes into the batch a model sees (a replayed view in training, resize +
centre crop, :func:`center_boxes`, in evaluation).
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

    def boxes(self, view: int, ids: np.ndarray, height, width) -> tuple[np.ndarray, np.ndarray]:
        """Crop boxes ``[n, 4]`` (top, left, h, w) in pixels and flips ``[n]`` bool for (view, ids).

        ``height`` and ``width`` are one size for all ids or one per id (images of any size): the box
        of (seed, view, id) is drawn relative to that image's own size."""
        tries = 10
        u = uniforms(self.seed, view, ids, 2 * tries + 3)
        n = len(u)
        height = np.broadcast_to(np.asarray(height, dtype=np.int64), (n,))
        width = np.broadcast_to(np.asarray(width, dtype=np.int64), (n,))
        area = (height * width).astype(np.float64)
        lo, hi = np.log(self.ratio[0]), np.log(self.ratio[1])
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
        box[~done, 2], box[~done, 3] = height[~done], width[~done]  # fallback: the whole image
        box[:, 0] = np.floor(u[:, -3] * (height - box[:, 2] + 1)).astype(np.int64)
        box[:, 1] = np.floor(u[:, -2] * (width - box[:, 3] + 1)).astype(np.int64)
        flips = (u[:, -1] < 0.5) if self.flip else np.zeros(n, dtype=bool)
        return box, flips

    def apply(self, images: torch.Tensor, view: int, ids) -> torch.Tensor:
        """Augment a float batch ``[n, C, H, W]`` (one image size) as view ``view`` of samples ``ids``
        (bilinear); see :func:`crop_images` for images of different sizes."""
        n, _, height, width = images.shape
        out_h, out_w = self.out_size or (height, width)
        ids = np.asarray(ids.cpu() if torch.is_tensor(ids) else ids, dtype=np.int64)
        box, flips = self.boxes(view, ids, height, width)
        return crop_resize(images, box, flips, (out_h, out_w))


def center_boxes(height, width, out_hw, fraction: float = 0.875) -> np.ndarray:
    """Evaluation boxes ``[n, 4]`` (top, left, h, w): "resize the shorter side to ``max(out_hw) /
    fraction``, then take the centre ``out_hw``" (ImageNet's 256 -> 224 at the default), as the box
    in the image's own pixels that this resize and crop cut out; ``height``/``width`` one size or one
    per image. ``fraction=1`` on an image of the output's size is the whole image."""
    height = np.atleast_1d(np.asarray(height, dtype=np.int64))
    width = np.atleast_1d(np.asarray(width, dtype=np.int64))
    out_h, out_w = out_hw
    scale = np.minimum(height, width) * fraction / max(out_h, out_w)  # source pixels per output pixel
    h = np.clip(np.round(out_h * scale), 1, height).astype(np.int64)
    w = np.clip(np.round(out_w * scale), 1, width).astype(np.int64)
    return np.stack([(height - h) // 2, (width - w) // 2, h, w], axis=1)


def crop_images(images: list, boxes: np.ndarray, flips: np.ndarray, out_hw) -> torch.Tensor:
    """Crop uint8 ``[H, W, C]`` images of any sizes, each to its box (flipped where asked), resized to
    ``out_hw``: float32 ``[n, C, *out_hw]`` in [-1, 1], each sample as :func:`crop_resize` makes it."""
    from kdprune.data import to_float
    out = [crop_resize(to_float(np.asarray(im)[None]), boxes[k:k + 1], flips[k:k + 1], out_hw)
           for k, im in enumerate(images)]
    return torch.cat(out) if out else torch.empty(0, 3, *out_hw)


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
def crop_batch(images, ids, *, augment: Augment | None = None, view: int = 0, image_size=None,
               fraction: float = 0.875, where: str = "the dataset") -> torch.Tensor:
    """The float batch ``[n, C, H', W']`` (in [-1, 1]) a model sees for uint8 ``[H, W, C]`` ``images``
    of samples ``ids``, whatever their sizes (see :func:`crop_plan` for which crop)."""
    from kdprune.data import to_float

    batch = images if isinstance(images, np.ndarray) and images.ndim == 4 else None  # [B, H, W, C] already
    images = list(images) if batch is not None else [np.asarray(im) for im in images]
    plan = crop_plan([im.shape for im in images], ids, augment=augment, view=view, image_size=image_size,
                     fraction=fraction, where=where)
    if batch is None and len({im.shape for im in images}) == 1:
        batch = np.stack(images)
    if plan is None:
        return to_float(batch)
    boxes, flips, out_hw = plan
    if batch is not None:  # one size: one grid_sample over the batch
        return crop_resize(to_float(batch), boxes, flips, out_hw)
    return crop_images(images, boxes, flips, out_hw)


def crop_plan(shapes, ids, *, augment: Augment | None = None, view: int = 0, image_size=None,
              fraction: float = 0.875, where: str = "the dataset"):
    """``(boxes [n, 4], flips [n], out_hw)``: the crop of each image of ``shapes`` ((H, W, ...) each)
    that every backend cuts, or None to serve the images as they are (no augmentation and no
    ``image_size``: they must then have one size):

    - with ``augment``: view ``view`` of each sample, its box drawn relative to the image's own size,
      resized to ``augment.out_size`` (else ``image_size``, else the images' one size): what the
      teacher store holds and every loader replays;
    - else with ``image_size`` (an int or (H, W)): the evaluation crop, :func:`center_boxes`, except
      for images already of that size, which are served as they are.
    """
    from kdprune.errors import DataError

    sizes = {tuple(s[:2]) for s in shapes}
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    out_hw = (augment.out_size if augment is not None else None) or size
    if out_hw is None and len(sizes) > 1:
        raise DataError(f"{where} has images of different sizes ({_sizes(sizes)}) and no output size was "
                        "given: pass an image size (--image-size N, or image_size= / Augment(out_size=))")
    if augment is None and (out_hw is None or sizes == {tuple(out_hw)}):
        return None  # served as they are (already of the output size)
    heights = np.array([s[0] for s in shapes], dtype=np.int64)
    widths = np.array([s[1] for s in shapes], dtype=np.int64)
    out_hw = tuple(out_hw or next(iter(sizes)))
    if augment is not None:
        boxes, flips = augment.boxes(view, np.asarray(ids, dtype=np.int64), heights, widths)
    else:
        boxes, flips = center_boxes(heights, widths, out_hw, fraction), np.zeros(len(shapes), dtype=bool)
    return boxes, flips, out_hw


def _sizes(sizes) -> str:
    """``WxH`` of a few of the (H, W) ``sizes``."""
    return ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
