"""Training: the :class:`Trainer` (AMP, accumulation, EMA, DDP, resumable checkpoints), the functional
:func:`fit`, evaluation, the teacher sources, and whole runs from a :class:`TrainConfig`.

Names resolve on first use, so ``kdprune.train.config`` (what the CLI parses flags into) imports
without torch.
"""
from importlib import import_module

_EXPORTS = {
    "TrainConfig": "kdprune.train.config",
    "History": "kdprune.train.loop", "Trainer": "kdprune.train.loop",
    "evaluate": "kdprune.train.loop", "fit": "kdprune.train.loop",
    "train_run": "kdprune.train.run",
    "OnlineTeacher": "kdprune.train.teacher", "StoredTeacher": "kdprune.train.teacher",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdprune.train' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
