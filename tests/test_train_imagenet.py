"""The ImageNet recipe of docs/imagenet.md, end to end, on a tiny ImageNet-format folder.

The same commands and the same config file as the real recipe, scaled down by flags: 4 classes,
48 training and 16 validation JPEGs of varied sizes (20 to 40 px, as ImageNet's vary), 16 px crops,
a CIFAR ResNet-20 of width 8 instead of ResNet-50, the torch loader (DataLoader workers) instead of
FFCV, and 2 gloo ranks instead of 8 GPUs. What it checks: the config file validates and its flags
override it, a folder of original-size JPEGs flows through teacher -> logits (2 augmented views) ->
prune (by the teacher run's own EL2N score file) -> DDP training with the store, and the student's
outputs are where the recipe says.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kdprune.cli import main as cli
from kdprune.data.folder import write_jpeg_folder
from kdprune.train import TrainConfig

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "imagenet_resnet50.json")
# what the tiny run changes in the recipe's config (everything else comes from the file)
SMALL = ["--model", "resnet20", "--width", "8", "--batch-size", "16", "--lr", "0.05", "--image-size", "16", "--device", "cpu",
         "--loader", "torch", "--workers", "1", "--compile", "false", "--eval-every", "1", "--log-every", "1",
         "--checkpoint-every", "2", "--no-progress"]


def test_recipe_config_validates():
    cfg = TrainConfig.load(CONFIG)
    assert cfg.model == "torchvision:resnet50" and cfg.loader == "ffcv" and cfg.amp == "bf16"
    assert cfg.per_rank_batch(8) == 128


def test_imagenet_recipe_end_to_end(tmp_path):
    root = tmp_path / "imagenet"
    write_jpeg_folder(root / "train", 48, 4, size=(20, 40), seed=0)
    write_jpeg_folder(root / "val", 16, 4, size=(20, 40), seed=1)
    data = ["--dataset", "folder", "--data-dir", str(root)]

    # images of varied sizes and no crop size: one clear error from the DataLoader worker, no traceback
    res = subprocess.run([sys.executable, "-m", "kdprune", "teacher", *data, "--config", CONFIG, *SMALL,
                          "--image-size", "0", "--epochs", "1", "--amp", "none", "--out", str(tmp_path / "t0")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "different sizes" in res.stderr and "--image-size" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # 1. the teacher (on a GPU machine: a pretrained torchvision model saved with save_model)
    assert cli(["teacher", *data, "--config", CONFIG, *SMALL, "--epochs", "1", "--amp", "none", "--out", str(tmp_path / "teacher")]) == 0
    # 2. its logits on 2 augmented views of every training image
    assert cli(["logits", *data, "--teacher", str(tmp_path / "teacher" / "model.pt"), "--views", "2",
                "--image-size", "16", "--batch-size", "16", "--no-progress", "--out", str(tmp_path / "logits")]) == 0
    # 3. keep the harder half by the EL2N the teacher's own training steps recorded (a score file)
    assert cli(["prune", *data, "--scores", str(tmp_path / "teacher" / "el2n"), "--fraction", "0.5",
                "--out", str(tmp_path / "kept")]) == 0
    # 4. the student under torchrun, distilling the stored views
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    student = tmp_path / "student"
    res = subprocess.run([*launcher, "--standalone", "--nproc_per_node=2", "-m", "kdprune", "train", *data,
                          "--config", CONFIG, *SMALL, "--epochs", "2", "--amp", "bf16",
                          "--subset", str(tmp_path / "kept"), "--store", str(tmp_path / "logits"),
                          "--out", str(student)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    m = json.loads((student / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["kept"] == 24 and m["config"]["alpha"] == 0.5
    assert m["config"]["label_smoothing"] == 0.1 and m["config"]["schedule"] == "cosine"  # from the file
    assert m["samples_seen"] == 2 * 24 and m["steps"] == 4
    assert 0.0 <= m["test_accuracy"] <= 1.0 and all(np.isfinite(r["train_loss"]) for r in m["history"])
    kept = np.load(str(tmp_path / "kept.npy"))
    el2n = np.load(str(student / "el2n.npy"))
    assert np.isfinite(el2n[kept]).all() and np.isnan(np.delete(el2n, kept)).all()
    for name in ("model.pt", "model.pt.json", "checkpoint.pt", "metrics.jsonl"):
        assert (student / name).exists()


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "ffcv"])
def test_original_size_jpegs_train_on_the_converted_loaders(loader, tmp_path):
    """The same folder of original-size JPEGs converted from the CLI and read by the FFCV or DALI
    backend at every step: teacher -> logits (2 views, decoded by that backend) -> student distilling
    the stored views, one epoch each."""
    root = tmp_path / "imagenet"
    write_jpeg_folder(root / "train", 24, 4, size=(20, 40), seed=0)
    write_jpeg_folder(root / "val", 8, 4, size=(20, 40), seed=1)
    data = ["--dataset", "folder", "--data-dir", str(root)]
    ext = ".beton" if loader == "ffcv" else "_dali"
    conv = {split: str(tmp_path / f"{split}{ext}") for split in ("train", "val")}
    for split, out in conv.items():
        assert cli(["convert", "--format", loader, *data, "--split", split, "--workers", "1", "--out", out]) == 0
    fast = [*SMALL, "--loader", loader, "--train-data", conv["train"], "--val-data", conv["val"], "--epochs", "1",
            "--amp", "none"]
    assert cli(["teacher", *data, "--config", CONFIG, *fast, "--out", str(tmp_path / "teacher")]) == 0
    assert cli(["logits", *data, "--teacher", str(tmp_path / "teacher" / "model.pt"), "--views", "2",
                "--loader", loader, "--converted", conv["train"], "--workers", "1", "--image-size", "16",
                "--batch-size", "16", "--no-progress", "--out", str(tmp_path / "logits")]) == 0
    assert cli(["train", *data, "--config", CONFIG, *fast, "--store", str(tmp_path / "logits"),
                "--out", str(tmp_path / "student")]) == 0
    m = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert m["kept"] == 24 and m["config"]["loader"] == loader and 0.0 <= m["test_accuracy"] <= 1.0


def test_teacher_logits_decoded_in_workers_equal_the_main_process(tmp_path):
    """`write_teacher_logits(workers=2)` decodes a varied-size JPEG folder (and crops its views) in
    kdprune's torch loader's worker processes: the stored logits are those of `workers=0`, which
    decodes in this process, view by view."""
    import torch

    import kdprune
    from kdprune.data import Augment
    from kdprune.data.folder import load_folder_split

    write_jpeg_folder(tmp_path / "jpegs" / "train", 37, 4, size=(20, 40), seed=2)
    data = load_folder_split(tmp_path / "jpegs", "train")
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 4))
    aug, size = Augment(seed=5, out_size=(16, 16)), (16, 16)
    stores = [kdprune.write_teacher_logits(teacher, data, tmp_path / f"w{w}", views=2, augment=aug, image_size=size,
                                           batch_size=8, dtype="float32", workers=w, progress=False)
              for w in (0, 2)]
    ids = torch.arange(len(data))
    for view in range(2):
        torch.testing.assert_close(stores[1].gather(ids, view=view), stores[0].gather(ids, view=view),
                                   rtol=0, atol=0)
    assert not torch.equal(stores[0].gather(ids, view=0), stores[0].gather(ids, view=1))


@pytest.mark.parametrize("loader", ["dali", "ffcv"])
def test_teacher_logits_decoded_by_dali_and_ffcv_equal_the_torch_loaders(loader, tmp_path):
    """`write_teacher_logits(loader=..., converted=...)` decodes and crops the views in DALI's or
    FFCV's threads: the same views, so the same logits as the torch backend's (DALI: to float
    rounding; FFCV stores re-encoded JPEGs, so up to JPEG noise, far nearer the same view than the other)."""
    import torch

    import kdprune
    from kdprune.data import Augment
    from kdprune.data.folder import load_folder_split

    write_jpeg_folder(tmp_path / "jpegs" / "train", 37, 4, size=(20, 40), seed=2)
    data = load_folder_split(tmp_path / "jpegs", "train")
    converted = tmp_path / ("train.beton" if loader == "ffcv" else "train_dali")
    kdprune.convert(data, loader, converted, workers=1)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 4))
    common = dict(views=2, augment=Augment(seed=5, out_size=(16, 16)), image_size=(16, 16), batch_size=8,
                  dtype="float32", workers=1, progress=False)
    ours = kdprune.write_teacher_logits(teacher, data, tmp_path / loader, loader=loader, converted=converted, **common)
    torch_store = kdprune.write_teacher_logits(teacher, data, tmp_path / "torch", **common)
    ids = torch.arange(len(data))
    for view in range(2):
        got, want = ours.gather(ids, view=view), torch_store.gather(ids, view=view)
        if loader == "dali":
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        else:
            other = torch_store.gather(ids, view=1 - view)
            assert (got - want).abs().mean() * 3 < (got - other).abs().mean()


def test_teacher_logits_through_ffcv_or_dali_need_the_conversion(tmp_path):
    import torch

    import kdprune
    from kdprune.errors import ConfigError, DataError

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 8, 8), torch.arange(8) % 2)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    with pytest.raises(DataError, match=r"kdprune convert --format dali --out PATH"):
        kdprune.write_teacher_logits(teacher, data, tmp_path / "s", loader="dali", progress=False)
    with pytest.raises(ConfigError, match="unknown loader backend 'jpeg'"):
        kdprune.write_teacher_logits(teacher, data, tmp_path / "s", loader="jpeg", progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()  # nothing half-written
