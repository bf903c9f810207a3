"""The PyTorch ecosystem for real: a torchvision ImageFolder as the source, torchvision and timm models
through teacher -> logits -> pruned KD training. Tiny images (16 px, 36 files) keep it to seconds."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kdprune
from kdprune.models import build_model

torchvision = pytest.importorskip("torchvision")
from torchvision import transforms  # noqa: E402

CLASSES, PER_CLASS, SIZE = 3, 12, 16


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``root/<class>/<n>.jpg``: class c is a colour, with noise, so a model can tell them apart."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir()
        for n in range(PER_CLASS):
            pixels = rng.integers(0, 60, (SIZE, SIZE, 3)) + np.eye(3, dtype=np.int64)[c] * 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{c}" / f"{n}.jpg", quality=95)
    return str(root)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread here: these convolutions are tiny, and on a shared two-core machine spinning
    OpenMP threads made them several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _folder(root):
    # kdprune's models take inputs in [-1, 1]
    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    return torchvision.datasets.ImageFolder(root, transform=to_input)


def test_imagefolder_torchvision_teacher_timm_student(image_folder, tmp_path):
    data = _folder(image_folder)
    n = len(data)
    torch.manual_seed(0)
    teacher = build_model("torchvision:resnet18", CLASSES, 3)
    kdprune.fit(teacher, DataLoader(data, batch_size=12, shuffle=True), epochs=1, lr=0.02, progress=False)
    store = kdprune.write_teacher_logits(teacher, data, tmp_path / "logits", batch_size=10, dtype="float32",
                                         progress=False)
    assert store.num_samples == n and store.num_classes == CLASSES
    assert store.meta["dataset_fingerprint"] == kdprune.fingerprint(data)
    ids = torch.tensor([0, 13, 30])
    with torch.no_grad():
        want = teacher.eval()(torch.stack([data[int(i)][0] for i in ids]))
    torch.testing.assert_close(store.gather(ids), want, rtol=1e-4, atol=1e-4)

    subset = kdprune.prune(None, 0.5, mode="random", labels=data.targets, class_balanced=True)
    loader = DataLoader(kdprune.with_ids(data), batch_size=6, sampler=kdprune.KeptIdSampler(subset))
    student = build_model("timm:test_resnet", CLASSES, 3)
    history = kdprune.fit(student, loader, teacher=store, loss_fn=kdprune.KDLoss(alpha=0.7, temperature=2.0),
                          epochs=2, lr=0.02, eval_loader=DataLoader(data, batch_size=12), progress=False)
    assert [e["samples"] for e in history.epochs] == [n // 2, n // 2]
    assert np.isfinite(history.epochs[-1]["train_loss"]) and history.epochs[-1]["test_samples"] == n


def test_the_torch_loader_reads_an_imagefolder(image_folder):
    """``kdprune.loaders.build("torch", dataset, ids)`` on a torchvision dataset: exactly the kept ids,
    in the KeptIdSampler's order; ``ids=None`` serves every sample (evaluation)."""
    from kdprune.loaders import build

    data = _folder(image_folder)
    ids = np.arange(1, len(data), 3)
    loader = build("torch", data, ids, batch_size=5, train=True, seed=4, workers=0)
    sampler = kdprune.KeptIdSampler(ids, seed=4)
    for epoch in range(2):
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        batches = list(loader)
        assert torch.cat([b.ids for b in batches]).tolist() == list(sampler)
        for b in batches:
            assert b.x.shape[1:] == (3, SIZE, SIZE) and b.y.tolist() == [data.targets[i] for i in b.ids.tolist()]
    every = build("torch", data, None, batch_size=8, train=False, workers=0)
    assert sorted(torch.cat([b.ids for b in every]).tolist()) == list(range(len(data)))
