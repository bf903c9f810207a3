"""The README's Python code runs as written: its ```python blocks, in order, as one script, in a folder
holding what the quick start expects of a user (``data/train``, ``data/val`` image folders and a
trained teacher's ``teacher.pt``), made tiny here (3 classes, 16 px images)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def python_blocks(path: str = README) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown file, in order."""
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", f.read(), flags=re.S | re.M)


@pytest.fixture
def user_folder(tmp_path):
    """What a user has beside the quick start: image folders and the teacher's weights."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c in range(3):
            os.makedirs(tmp_path / "data" / split / f"class{c}")
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16, 3)) + np.eye(3, dtype=np.int64)[c] * 180
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / split / f"class{c}" / f"{i}.jpg")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=3).state_dict(), tmp_path / "teacher.pt")
    return tmp_path


def test_readme_has_a_python_quick_start():
    blocks = python_blocks()
    assert blocks, "README.md has no ```python block"
    code = "\n".join(blocks)
    for name in ("write_teacher_logits", "with_ids", "KeptIdSampler", "KDLoss", "evaluate"):
        assert f"kdprune.{name}" in code, f"the quick start no longer shows kdprune.{name}"


def test_readme_python_blocks_run(user_folder):
    script = user_folder / "readme_quick_start.py"
    script.write_text("\n\n".join(python_blocks()))
    # one thread: the suite's processes share two cores, where spinning OpenMP threads slow a step 5x
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script)], cwd=user_folder, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (user_folder / "runs" / "teacher_logits").is_dir()
    assert "accuracy" in proc.stdout + proc.stderr
