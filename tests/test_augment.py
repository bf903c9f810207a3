"""The deterministic augmentation the teacher store and every loader share."""
import numpy as np
import torch

from kdprune.data import Augment
from kdprune.data.augment import crop_resize, uniforms


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
