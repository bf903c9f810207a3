"""The numba crop kernel FFCV's decoder runs against its reference, ``augment.crop_resize`` (grid_sample)
in float64: every box shape (down- and up-sampling, the whole image, one pixel, boxes on the border),
both flips, 1, 3 and 4 channels, odd output sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdprune.data import Augment, to_float
from kdprune.data.augment import crop_resize
from kdprune.loaders.crop_kernel import box_table, crop_batch_into, crop_resize_into, to_float_into


def kernel(images: np.ndarray, box: np.ndarray, flips: np.ndarray, out_hw) -> torch.Tensor:
    out = np.full((len(images), images.shape[3], *out_hw), np.nan, dtype=np.float32)
    for n in range(len(images)):
        crop_resize_into(images[n], *box[n], bool(flips[n]), out[n])
    return torch.from_numpy(out)


def reference(images: np.ndarray, box, flips, out_hw, dtype=torch.float64) -> torch.Tensor:
    return crop_resize(to_float(images).to(dtype), box, flips, out_hw)


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 70), width=st.integers(1, 70), channels=st.sampled_from([1, 3, 4]),
       out_h=st.integers(1, 50), out_w=st.integers(1, 50), seed=st.integers(0, 2**31), data=st.data())
def test_random_boxes_match_the_float64_reference(height, width, channels, out_h, out_w, seed, data):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (3, height, width, channels), dtype=np.uint8)
    box = np.zeros((3, 4), dtype=np.int64)
    for n in range(3):
        h, w = data.draw(st.integers(1, height)), data.draw(st.integers(1, width))
        box[n] = data.draw(st.integers(0, height - h)), data.draw(st.integers(0, width - w)), h, w
    flips = np.array([data.draw(st.booleans()) for _ in range(3)])
    got = kernel(images, box, flips, (out_h, out_w))
    torch.testing.assert_close(got.double(), reference(images, box, flips, (out_h, out_w)), atol=2e-6, rtol=0)


@pytest.mark.parametrize("size,out_hw", [((256, 256), (224, 224)), ((32, 32), (24, 24)), ((28, 28), (28, 28)),
                                         ((100, 60), (37, 80)), ((375, 500), (224, 224))])
def test_augment_boxes_match_torch_to_float32_rounding(size, out_hw):
    """The boxes training draws, against both the float64 reference and torch's own float32 path
    (Augment.apply, what the other backends run): the kernel is nearer the float64 values than torch
    is (torch's float32 coordinates are off by up to 1e-4 at 500 px, a sixtieth of a grey level)."""
    rng = np.random.default_rng(sum(size))
    images = rng.integers(0, 256, (32, *size, 3), dtype=np.uint8)
    box, flips = Augment(seed=11, out_size=out_hw).boxes(2, np.arange(32), *size)
    assert flips.any() and not flips.all()
    got = kernel(images, box, flips, out_hw)
    exact = reference(images, box, flips, out_hw)
    torch32 = reference(images, box, flips, out_hw, torch.float32)
    ours_err = (got.double() - exact).abs().max().item()
    assert ours_err < 1e-6
    assert ours_err <= (torch32.double() - exact).abs().max().item() < 2e-4


def test_whole_image_unflipped_is_the_image():
    images = np.random.default_rng(0).integers(0, 256, (2, 9, 13, 3), dtype=np.uint8)
    box = np.array([[0, 0, 9, 13]] * 2)
    got = kernel(images, box, np.array([False, True]), (9, 13))
    torch.testing.assert_close(got[0], to_float(images)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], to_float(images)[1].flip(2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size,out_hw", [((256, 256), (224, 224)), ((375, 500), (224, 224)), ((20, 30), (40, 40))])
def test_uint8_output_is_the_float_crop_rounded_to_grey_levels(size, out_hw):
    """Into uint8 memory the kernel writes the same crop as grey levels, rounded to the nearest: a
    loader's ``dtype="uint8"`` batch, normalised on the device, is the float batch to half a level."""
    rng = np.random.default_rng(sum(size))
    images = rng.integers(0, 256, (8, *size, 3), dtype=np.uint8)
    box, flips = Augment(seed=3, out_size=out_hw).boxes(1, np.arange(8), *size)
    grey = np.zeros((8, 3, *out_hw), dtype=np.uint8)
    crop_batch_into(images, box_table(Augment(seed=3, out_size=out_hw), 1, np.arange(8), *size), grey)
    levels = (reference(images, box, flips, out_hw) + 1) * 127.5
    assert (torch.from_numpy(grey).double() - levels).abs().max() <= 0.5 + 1e-4
    assert (torch.from_numpy(grey).double() - levels.round()).abs().max() <= 1  # at worst a level on a tie
    image = images[0, :5, :7]
    out = np.zeros((3, 5, 7), dtype=np.uint8)
    to_float_into(image, np.zeros(256, np.float32), out)  # uncropped: the levels themselves, [C, H, W]
    assert (out == image.transpose(2, 0, 1)).all()


@pytest.mark.parametrize("shape", [(28, 28, 1), (5, 7, 3), (1, 1, 4)])
def test_to_float_into_equals_to_float_exactly(shape):
    """The uncropped path of the FFCV decoder: every grey level, in every channel, as to_float gives it."""
    rng = np.random.default_rng(sum(shape))
    image = rng.permutation(np.arange(np.prod(shape)) % 256).astype(np.uint8).reshape(shape)  # every level that fits
    levels = to_float(np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1)).numpy().reshape(256)
    out = np.full((shape[2], shape[0], shape[1]), np.nan, dtype=np.float32)
    to_float_into(image, levels, out)
    torch.testing.assert_close(torch.from_numpy(out), to_float(image[None])[0], atol=0, rtol=0)


def test_batch_crop_is_the_per_sample_crop_of_augments_boxes():
    """What the DALI backend runs on a decoded batch: each sample cropped to its (view, id) box, as
    the per-sample kernel (FFCV's decode) does, whatever thread it lands on."""
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(9, 40, 52, 3), dtype=np.uint8)
    ids = rng.choice(1000, 9, replace=False)
    augment = Augment(seed=4, out_size=(17, 23))
    boxes = box_table(augment, 2, ids, 40, 52)
    box, flips = augment.boxes(2, ids, 40, 52)
    np.testing.assert_array_equal(boxes, np.column_stack([box, flips]))
    out = np.full((9, 3, 17, 23), np.nan, dtype=np.float32)
    crop_batch_into(images, boxes, out)
    for i in range(9):
        one = np.empty((3, 17, 23), dtype=np.float32)
        crop_resize_into(images[i], *box[i], bool(flips[i]), one)
        np.testing.assert_array_equal(out[i], one)


def test_images_of_different_sizes_on_threads_match_the_torch_crop():
    """What the DALI backend runs on a decoded batch of images of any sizes: each cut to its own box
    (relative to its own size) on a thread pool, as the per-sample kernel does alone, and as the torch
    backend's ``crop_images`` does to float32 rounding."""
    from concurrent.futures import ThreadPoolExecutor

    from kdprune.data.augment import crop_images
    from kdprune.loaders.crop_kernel import crop_each_into

    rng = np.random.default_rng(5)
    sizes = [(37, 50), (120, 64), (24, 24), (300, 211), (61, 99)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    ids = np.arange(10, 15)
    box, flips = Augment(seed=9, out_size=(20, 28)).boxes(1, ids, [h for h, _ in sizes], [w for _, w in sizes])
    out = np.full((5, 3, 20, 28), np.nan, dtype=np.float32)
    with ThreadPoolExecutor(2) as pool:
        crop_each_into(images, box, flips, out, pool=pool)
    for i, image in enumerate(images):
        one = np.empty((3, 20, 28), dtype=np.float32)
        crop_resize_into(image, *box[i], bool(flips[i]), one)
        np.testing.assert_array_equal(out[i], one)
    torch.testing.assert_close(torch.from_numpy(out), crop_images(images, box, flips, (20, 28)), atol=2e-4, rtol=0)
