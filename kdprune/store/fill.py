"""How a store names its teacher: a description of a module (class, size, weight hash) or of a saved
checkpoint (path, content hash), so a store is never resumed or reused with another teacher's
outputs. The store itself is filled by :func:`kdprune.write_teacher_logits`."""
from __future__ import annotations

import os

import torch


def describe_model(model: torch.nn.Module) -> dict:
    """A JSON description of a teacher: class, parameter count and a hash of its weights, so a store
    is never resumed or reused with another teacher's outputs."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
            "weights_sha256": h.hexdigest()[:16]}


def checkpoint_description(path: str) -> dict:
    """Teacher description for a checkpoint file: its path and a content hash (so a resume or a re-run
    with another checkpoint is refused instead of mixing two teachers)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"checkpoint": os.path.abspath(path), "sha256": h.hexdigest()[:16]}


__all__ = ["describe_model", "checkpoint_description"]
