"""The deterministic augmentation the teacher store and every loader share."""
import numpy as np
import pytest
import torch

from kdprune.data import Augment, to_float
from kdprune.data.augment import center_boxes, crop_batch, crop_resize, uniforms
from kdprune.errors import DataError


def test_same_key_same_draw_any_order():
    ids = np.array([5, 17, 3, 999_999_937])
    u = uniforms(7, 2, ids, 5)
    np.testing.assert_array_equal(u[::-1], uniforms(7, 2, ids[::-1], 5))
    assert not np.allclose(u, uniforms(7, 3, ids, 5))  # another view
    assert not np.allclose(u, uniforms(8, 2, ids, 5))  # another seed
    assert (u >= 0).all() and (u < 1).all()


def test_boxes_inside_image_and_scale_respected():
    aug = Augment(seed=1, scale=(0.3, 1.0))
    box, flips = aug.boxes(0, np.arange(5000), 28, 20)
    top, left, h, w = box.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 20).all()
    area = h * w / (28 * 20)
    assert area.min() >= 0.25 and area.max() <= 1.0
    assert 0.4 < flips.mean() < 0.6


def test_full_box_without_flip_is_identity():
    x = torch.rand(3, 2, 9, 11)
    box = np.tile([0, 0, 9, 11], (3, 1))
    out = crop_resize(x, box, np.zeros(3, bool), (9, 11))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    flipped = crop_resize(x, box, np.ones(3, bool), (9, 11))
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)


def test_integer_crop_matches_slicing():
    x = torch.rand(1, 1, 16, 16)
    box = np.array([[4, 2, 8, 8]])
    out = crop_resize(x, box, np.zeros(1, bool), (8, 8))
    torch.testing.assert_close(out, x[:, :, 4:12, 2:10], atol=1e-5, rtol=0)


def test_apply_is_a_function_of_view_and_id():
    aug = Augment(seed=3, out_size=(12, 12))
    x = torch.rand(4, 1, 28, 28)
    a = aug.apply(x, 1, [10, 11, 12, 13])
    b = aug.apply(x[[2, 0]], 1, [12, 10])
    torch.testing.assert_close(a[[2, 0]], b)
    assert a.shape == (4, 1, 12, 12)
    assert Augment.from_dict(aug.to_dict()) == aug


def test_boxes_are_drawn_relative_to_each_images_own_size():
    """A box of (seed, view, id) depends on that image's size only: drawn for a batch of mixed sizes it
    is the box drawn for the image alone; and it always lies inside its image."""
    aug = Augment(seed=4)
    ids = np.arange(200)
    rng = np.random.default_rng(0)
    heights, widths = rng.integers(20, 500, 200), rng.integers(20, 500, 200)
    box, flips = aug.boxes(3, ids, heights, widths)
    for k in (0, 17, 199):
        one, flip = aug.boxes(3, ids[k:k + 1], heights[k], widths[k])
        np.testing.assert_array_equal(box[k], one[0])
        assert flips[k] == flip[0]
    top, left, h, w = box.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= heights).all() and (left + w <= widths).all()
    area = h * w / (heights * widths)
    assert area.min() >= 0.3 and area.max() <= 1.0


def test_center_boxes_are_resize_then_centre_crop():
    # ImageNet's 375x500 -> shorter side 256, centre 224: the box is the centre 328x328 of the original
    np.testing.assert_array_equal(center_boxes(375, 500, (224, 224)), [[23, 86, 328, 328]])
    # fraction 1 on an image of the output's size is the whole image; a 50x100 output of a 100x200 image:
    # shorter side to 100 (no change), the centre 50x100
    np.testing.assert_array_equal(center_boxes(32, 32, (32, 32), fraction=1.0), [[0, 0, 32, 32]])
    np.testing.assert_array_equal(center_boxes(100, 200, (50, 100), fraction=1.0), [[25, 50, 50, 100]])


def test_crop_batch_serves_images_of_any_size():
    """A batch of images of different sizes: each sample is the crop of its own image alone (a
    training view or the evaluation crop), at the output size; without an output size the error
    names the fix."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 41), (64, 20), (33, 33)]]
    ids = np.array([7, 3, 12])
    aug = Augment(seed=2, out_size=(16, 12))
    x = crop_batch(images, ids, augment=aug, view=1)
    assert x.shape == (3, 3, 16, 12)
    for k, im in enumerate(images):
        alone = aug.apply(to_float(im[None]), 1, ids[k:k + 1])
        torch.testing.assert_close(x[k:k + 1], alone, atol=1e-6, rtol=0)
    ev = crop_batch(images, ids, image_size=10)
    assert ev.shape == (3, 3, 10, 10)
    box = center_boxes(64, 20, (10, 10))[0]
    torch.testing.assert_close(ev[1:2], crop_resize(to_float(images[1][None]), box[None], np.zeros(1, bool), (10, 10)))
    with pytest.raises(DataError, match=r"different sizes \(41x30.*--image-size"):
        crop_batch(images, ids)
    same = [images[2]] * 2  # one size and no output size: the images as they are
    torch.testing.assert_close(crop_batch(same, ids[:2], image_size=33), to_float(np.stack(same)))
