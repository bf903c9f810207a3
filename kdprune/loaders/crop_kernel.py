"""The replayed crop as a numba kernel, for loaders whose decode runs in compiled threads (FFCV).

``crop_resize_into`` computes, for one uint8 ``[H, W, C]`` image, what
:func:`kdprune.data.augment.crop_resize` computes on ``to_float`` of it: the box (top, left, h, w),
the optional horizontal flip, resized to the output's size by bilinear sampling with
``grid_sample``'s conventions (align_corners=False, border padding), scaled to [-1, 1], written as
float32 ``[C, H', W']``; or, into a uint8 ``out``, as grey levels rounded to the nearest (what a loader
hands out with ``dtype="uint8"``, a quarter of the bytes, for normalisation on the device). The
sampling is axis-aligned, so it is separable: each output column has two source columns and two
weights, each output row two source rows and two weights, computed once per image. Coordinates are
computed in float64, so the result is within 1e-6 of a float64 reference; torch's float32 coordinates
put grid_sample itself up to 4e-5 off it at 256 px (1e-4 at 500 px, a sixtieth of a grey level), so
kernel and torch agree to that (tests/test_crop_kernel.py).

Compiled with numba (which FFCV depends on) without fastmath, so the arithmetic is the one written
here; ``nogil``, so FFCV's decode threads run them side by side.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def sample_axis(start, length, size, out_len, flip, index, weight):
    """Source indices ``index[k, 0:2]`` and weights ``weight[k, 0:2]`` of output position k along one
    axis: the window ``[start, start + length)`` of ``size`` pixels, resampled to ``out_len``."""
    for k in range(out_len):
        pos = (2 * k + 1) * length / (2.0 * out_len)  # half-pixel centres, as align_corners=False
        if flip:
            pos = length - pos
        coord = min(max(start + pos - 0.5, 0.0), size - 1.0)  # border padding clips the coordinate
        lo = int(np.floor(coord))
        frac = coord - lo
        index[k, 0], index[k, 1] = lo, min(lo + 1, size - 1)
        weight[k, 0], weight[k, 1] = 1.0 - frac, frac


@numba.njit(nogil=True, cache=True)
def resample_row(row, cols, col_w, dst):
    """``dst[c, j]`` = source row ``row`` ([W, C] uint8) sampled at output column j (grey levels).

    Three channels (RGB) read each source pixel's bytes together: 0.29 -> 0.235 ms per 300 x 400 ->
    224 px crop, bit for bit the same (one thread, 2-core x86_64 VM, 2026-12-05)."""
    if row.shape[1] == 3:
        for j in range(dst.shape[1]):
            a, b, w0, w1 = cols[j, 0], cols[j, 1], col_w[j, 0], col_w[j, 1]
            dst[0, j] = w0 * row[a, 0] + w1 * row[b, 0]
            dst[1, j] = w0 * row[a, 1] + w1 * row[b, 1]
            dst[2, j] = w0 * row[a, 2] + w1 * row[b, 2]
        return
    for c in range(row.shape[1]):
        for j in range(dst.shape[1]):
            dst[c, j] = col_w[j, 0] * row[cols[j, 0], c] + col_w[j, 1] * row[cols[j, 1], c]


@numba.njit(nogil=True, cache=True)
def crop_resize_into(image, top, left, h, w, flip, out):
    """``out[c, i, j]`` = the bilinear crop of ``image`` (uint8 [H, W, C]) to box (top, left, h, w),
    flipped when ``flip``, at output pixel (i, j): in [-1, 1] when ``out`` is float32 [C, H', W'],
    the grey level rounded to the nearest when ``out`` is uint8 (numba compiles each kind apart, so
    the test on the element size costs nothing).

    Two passes: each source row the output needs is resampled along x once (``resample_row``, into
    one of two ``lines``; output rows walk down the source, so two are enough), then each output row
    blends its two lines, a contiguous, vectorisable loop."""
    height, width, channels = image.shape
    out_h, out_w = out.shape[1], out.shape[2]
    rows, row_w = np.empty((out_h, 2), np.int64), np.empty((out_h, 2), np.float32)
    cols, col_w = np.empty((out_w, 2), np.int64), np.empty((out_w, 2), np.float32)
    lines = np.empty((2, channels, out_w), np.float32)
    sample_axis(top, h, height, out_h, False, rows, row_w)
    sample_axis(left, w, width, out_w, flip, cols, col_w)
    grey = out.itemsize == 1
    divisor = np.float32(1.0) if grey else np.float32(127.5)
    # to [-1, 1] as to_float does (p / 127.5 - 1); grey levels: + 0.5, so the cast rounds
    offset = np.float32(0.5) if grey else np.float32(-1.0)
    held0, held1 = -1, -1  # the source rows lines[0] and lines[1] hold
    for i in range(out_h):
        y0, y1 = rows[i, 0], rows[i, 1]
        if y0 == held1:  # the window moved down one source row: the lower line becomes the upper
            lines[0, :, :] = lines[1]
            held0 = y0
        if y0 != held0:
            resample_row(image[y0], cols, col_w, lines[0])
            held0 = y0
        if y1 != held1:
            resample_row(image[y1], cols, col_w, lines[1])
            held1 = y1
        wy0, wy1 = row_w[i, 0] / divisor, row_w[i, 1] / divisor  # the scale folded into the row weights
        for c in range(channels):
            for j in range(out_w):
                out[c, i, j] = wy0 * lines[0, c, j] + wy1 * lines[1, c, j] + offset


@numba.njit(nogil=True, cache=True)
def to_float_into(image, levels, out):
    """``out[c, i, j]`` = ``levels[image[i, j, c]]``: uint8 [H, W, C] to float32 [C, H, W] through the
    256 grey levels ``levels``, which the caller takes from ``to_float`` itself, so the two agree
    exactly; a table, not arithmetic, because FFCV compiles its pipeline with fastmath, under which
    an inlined ``p / 127.5`` may become a multiplication and move some values by one ulp. A uint8
    ``out`` gets the grey levels themselves, transposed to [C, H, W]."""
    height, width, channels = image.shape
    for c in range(channels):
        for i in range(height):
            for j in range(width):
                if out.itemsize == 1:
                    out[c, i, j] = image[i, j, c]
                else:
                    out[c, i, j] = levels[image[i, j, c]]


@numba.njit(nogil=True, parallel=True, cache=True)
def crop_batch_into(images, boxes, out):
    """``crop_resize_into`` for each sample of a uint8 ``[B, H, W, C]`` batch, the samples spread over
    numba's threads: ``boxes`` int64 ``[B, 5]`` (see :func:`box_table`), ``out`` float32 (or uint8)
    ``[B, C, H', W']``."""
    for i in numba.prange(images.shape[0]):
        box = boxes[i]
        crop_resize_into(images[i], box[0], box[1], box[2], box[3], box[4] != 0, out[i])


def box_table(augment, view: int, ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """``Augment.boxes`` of (view, ids) on ``height`` x ``width`` images as the kernels take them:
    int64 ``[B, 5]`` rows of (top, left, h, w, flip)."""
    box, flips = augment.boxes(view, np.asarray(ids, dtype=np.int64), height, width)
    return np.ascontiguousarray(np.column_stack([box, flips]), dtype=np.int64)


def crop_each_into(images, boxes: np.ndarray, flips: np.ndarray, out: np.ndarray, pool=None) -> np.ndarray:
    """``crop_resize_into`` for each uint8 ``[H, W, C]`` image of a list of any sizes, to its box
    (``boxes [n, 4]``, ``flips [n]``, as ``kdprune.data.augment.crop_plan`` gives them), into float32
    (or uint8) ``out [n, C, H', W']``; spread over ``pool`` (a ``concurrent.futures`` executor) when given."""
    def one(k):
        top, left, h, w = (int(v) for v in boxes[k])
        crop_resize_into(images[k], top, left, h, w, bool(flips[k]), out[k])

    if pool is None:
        for k in range(len(images)):
            one(k)
    else:
        for _ in pool.map(one, range(len(images))):
            pass
    return out
