"""The dataset layer: IDX and CIFAR readers on tiny files the tests write, synthetic data, validation."""
import gzip
import os

import numpy as np
import pytest

from kdprune.data import load_dataset, synthetic
from kdprune.data.cifar import load_cifar, write_cifar_batch
from kdprune.data.idx import load_fashion_mnist, write_idx
from kdprune.errors import DataError


def make_fashion_dir(root, n_train=60000, n_test=10000, gz=False, seed=0):
    """A Fashion-MNIST directory with the real file names and sizes (random pixels)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
            path = os.path.join(root, f"{stem}-{kind}-ubyte")
            write_idx(path, arr)
            if gz:
                with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
                    g.write(f.read())
                os.remove(path)
    return root


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    return make_fashion_dir(str(tmp_path_factory.mktemp("fmnist")))


def test_idx_round_trip(fashion_dir):
    ds = load_fashion_mnist("train", fashion_dir)
    assert ds.images.shape == (60000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert len(load_fashion_mnist("test", fashion_dir)) == 10000
    assert ds.classes[9] == "Ankle boot"


def test_gzipped_files_are_read(tmp_path):
    root = make_fashion_dir(str(tmp_path / "gz"), gz=True)
    assert len(load_fashion_mnist("test", root)) == 10000


def test_fingerprint_changes_with_content(fashion_dir, tmp_path):
    a = load_fashion_mnist("test", fashion_dir)
    other = make_fashion_dir(str(tmp_path / "other"), seed=1)
    b = load_fashion_mnist("test", other)
    assert a.fingerprint == load_fashion_mnist("test", fashion_dir).fingerprint
    assert a.fingerprint != b.fingerprint


def test_missing_dir_names_the_apt_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", str(tmp_path / "nope"))


def test_missing_file_is_named(tmp_path, fashion_dir):
    root = tmp_path / "partial"
    root.mkdir()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", str(root))


def _copy_dir(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


def test_truncated_file_is_detected(tmp_path, fashion_dir):
    root = _copy_dir(fashion_dir, str(tmp_path / "trunc"))
    path = os.path.join(root, "t10k-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("test", root)


def test_wrong_magic_is_detected(tmp_path, fashion_dir):
    root = _copy_dir(fashion_dir, str(tmp_path / "magic"))
    path = os.path.join(root, "t10k-labels-idx1-ubyte")
    with open(path, "r+b") as f:
        f.write((2051).to_bytes(4, "big"))  # an image magic in a label file
    with pytest.raises(DataError, match="magic number"):
        load_fashion_mnist("test", root)


def test_label_out_of_range_is_detected(tmp_path, fashion_dir):
    root = _copy_dir(fashion_dir, str(tmp_path / "labels"))
    labels = np.full(10000, 3, dtype=np.uint8)
    labels[17] = 12
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte"), labels)
    with pytest.raises(DataError, match="out of range"):
        load_fashion_mnist("test", root)


def test_wrong_count_is_detected(tmp_path):
    root = make_fashion_dir(str(tmp_path / "small"), n_train=60, n_test=10)
    with pytest.raises(DataError, match="expected 10000"):
        load_fashion_mnist("test", root)


def test_cifar10_reader(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 7)
        write_cifar_batch(str(folder / name), imgs, labels)
        batches.append((imgs, labels))
    train = load_cifar("cifar10", "train", str(tmp_path))  # the parent folder works too
    assert train.images.shape == (35, 32, 32, 3)
    np.testing.assert_array_equal(train.images[7:14], batches[1][0])  # channels-last round trip
    np.testing.assert_array_equal(train.labels[:7], batches[0][1])
    assert len(load_dataset("cifar10", "test", str(folder))) == 7


def test_cifar100_reader_and_missing_file(tmp_path):
    imgs = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(str(tmp_path / "train"), imgs, [0, 50, 99, 3], label_key=b"fine_labels")
    ds = load_cifar("cifar100", "train", str(tmp_path))
    assert ds.num_classes == 100 and ds.labels.tolist() == [0, 50, 99, 3]
    with pytest.raises(DataError, match="not found"):
        load_cifar("cifar100", "test", str(tmp_path))


def test_cifar_refuses_code_in_pickles(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DataError, match="refusing"):
        load_cifar("cifar10", "test", str(tmp_path))


def test_synthetic_is_deterministic_and_balanced():
    a, b = synthetic(300, 7, (16, 12, 3), seed=5), synthetic(300, 7, (16, 12, 3), seed=5)
    assert a.images.shape == (300, 16, 12, 3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.fingerprint == b.fingerprint != synthetic(300, 7, (16, 12, 3), seed=6).fingerprint
    counts = np.bincount(a.labels, minlength=7)
    assert counts.max() - counts.min() <= 1


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="fashion-mnist"):
        load_dataset("imagenet-1k")


def test_synthetic_test_split_is_the_same_task():
    """A nearest-template classifier fitted on train must do well on test (same class templates)."""
    train = load_dataset("synthetic", "train", num_samples=600, num_classes=6, seed=2)
    test = load_dataset("synthetic", "test", num_samples=600, num_classes=6, seed=2)
    assert test.fingerprint != train.fingerprint
    x_tr = train.images.reshape(len(train), -1).astype(np.float64)
    x_te = test.images.reshape(len(test), -1).astype(np.float64)
    means = np.stack([x_tr[train.labels == k].mean(0) for k in range(6)])
    pred = ((x_te[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == test.labels).mean() > 0.9


def test_jpeg_folder_of_varied_sizes_is_a_map_style_dataset(tmp_path):
    """``write_jpeg_folder`` with a size range gives images of their own sizes; the folder reads as a
    map-style dataset (item: image at its own size, label); ``--dataset folder`` means
    ROOT/train and ROOT/val, and a root without them is refused with the layout it expects."""
    from kdprune.data.folder import FolderDataset, load_folder_split, write_jpeg_folder

    folder = write_jpeg_folder(tmp_path / "imgs" / "train", 12, num_classes=3, size=(20, 40), seed=2)
    shapes = {folder[i][0].shape for i in range(len(folder))}
    assert len(shapes) > 3 and all(20 <= h <= 40 and 20 <= w <= 40 and c == 3 for h, w, c in shapes)
    image, label = folder[5]
    assert image.dtype == np.uint8 and label == folder.labels[5] and image.flags.writeable
    assert load_folder_split(tmp_path / "imgs", "train").fingerprint == folder.fingerprint
    with pytest.raises(DataError, match="no val/ folder.*ROOT/train"):
        load_folder_split(tmp_path / "imgs", "val")
    assert FolderDataset(tmp_path / "imgs" / "train").paths == folder.paths  # a path object works too


def test_array_dataset_is_a_map_style_dataset():
    data = synthetic(20, 4, (6, 5, 1), seed=1)
    image, label = data[7]
    np.testing.assert_array_equal(image, data.images[7])
    assert label == data.labels[7] and isinstance(label, int)
