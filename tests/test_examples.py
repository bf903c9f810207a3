"""Every script in examples/ runs as a user would run it, on a tiny image folder (3 classes, 16 px),
with the smallest torchvision model, in a subprocess (the DDP one under torchrun with 2 ranks on gloo)."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# one thread per process: several processes share two cores here, and OpenMP threads that spin
# against each other made a step 5x slower
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
SMALL = ["--epochs", "2", "--teacher-epochs", "1", "--image-size", "16", "--batch-size", "8", "--workers", "0",
         "--teacher-arch", "mobilenet_v3_small", "--student-arch", "mobilenet_v3_small", "--fraction", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``train/`` (3 x 8 images) and ``val/`` (3 x 4) in ImageFolder's layout."""
    from PIL import Image

    root = tmp_path_factory.mktemp("example_data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c in range(3):
            os.makedirs(root / split / f"class{c}")
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16, 3)) + np.eye(3, dtype=np.int64)[c] * 180
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"class{c}" / f"{i}.jpg")
    return str(root)


def _run(cmd, cwd, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_plain_loop(data, tmp_path):
    out = _run([sys.executable, os.path.join(EXAMPLES, "plain_loop.py"), "--data", data, "--out", "run", *SMALL],
               tmp_path)
    assert "student (mobilenet_v3_small) on 12 of 24 images" in out
    assert "epoch 2/2: train loss" in out and "val accuracy" in out
    assert (tmp_path / "run" / "student.pt").exists() and (tmp_path / "run" / "teacher_logits").is_dir()


def test_lightning_module(data, tmp_path):
    pytest.importorskip("lightning")
    out = _run([sys.executable, os.path.join(EXAMPLES, "lightning_module.py"), "--data", data, "--out", "run",
                *SMALL], tmp_path)
    assert "after 2 epochs on 12 of 24 images: val accuracy" in out
    assert (tmp_path / "run" / "teacher_logits").is_dir()


def test_ddp_torchrun_two_ranks(data, tmp_path):
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.join(EXAMPLES, "ddp_torchrun.py"), "--data", data, "--out", "run", *SMALL], tmp_path)
    # 12 kept ids over 2 ranks: 6 each, and the evaluation counts all 12 validation images once
    assert "on 12 of 24 images over 2 ranks (6 each per epoch)" in out
    assert "epoch 2/2: val accuracy" in out and "on 12 images" in out
    assert (tmp_path / "run" / "student.pt").exists()
