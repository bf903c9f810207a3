"""DDP: `torchrun --nproc_per_node=2 -m kdprune train` (gloo, CPU) with a global batch of 32 (16 per
rank) ends with the same weights as one process with a batch of 32.

Why it can: the loader deals one (seed, epoch) permutation round-robin, so at step s the two ranks'
16-sample batches together are exactly the single process's 32-sample batch s, and DDP's average of
the two per-rank mean gradients is the mean gradient over the 32. The model uses GroupNorm
(``--norm group``): it normalises each sample alone, whereas BatchNorm's statistics would be over 16
samples per rank instead of 32 (SyncBatchNorm fixes that on GPUs; ``--sync-bn``).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

from kdprune.cli import main as cli

ARGS = ["train", "--dataset", "synthetic", "--synthetic-samples", "96", "--epochs", "2", "--batch-size", "32",
        "--width", "4", "--norm", "group", "--log-every", "0", "--no-progress"]


def torchrun():
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*torchrun(), "--standalone", "--nproc_per_node=2", "-m", "kdprune", *ARGS,
                          "--out", str(ddp)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("test accuracy") == 1  # only rank 0 reports
    assert cli(ARGS + ["--out", str(single)]) == 0

    a = torch.load(single / "model.pt", weights_only=True)
    b = torch.load(ddp / "model.pt", weights_only=True)
    for k in a:  # (the two ranks' mean gradients are averaged, one process sums all 32: float32
        # rounding apart, grown over 6 steps to ~2e-6 on weights of ~1e-2)
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    m_single = json.loads((single / "metrics.json").read_text())
    m_ddp = json.loads((ddp / "metrics.json").read_text())
    assert m_ddp["world_size"] == 2 and m_single["world_size"] == 1
    assert m_ddp["samples_seen"] == m_single["samples_seen"] == 2 * 96  # summed over ranks
    assert m_ddp["steps"] == m_single["steps"] == 6
    for r_ddp, r_single in zip(m_ddp["history"], m_single["history"]):
        assert abs(r_ddp["train_loss"] - r_single["train_loss"]) < 1e-4
    assert m_ddp["test_accuracy"] == m_single["test_accuracy"]
    # the EL2N table is reduced over ranks: every sample has its score
    np.testing.assert_allclose(np.load(ddp / "el2n_epochs.npy"), np.load(single / "el2n_epochs.npy"),
                               rtol=1e-3, atol=1e-5)
    epochs = [json.loads(x) for x in open(ddp / "metrics.jsonl") if '"epoch"' in x]
    assert [r["epoch"] for r in epochs] == [0, 1]  # one writer
