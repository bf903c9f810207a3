"""Training: the :class:`Trainer` (AMP, accumulation, EMA, DDP, resumable checkpoints), the functional
:func:`fit`, evaluation, the teacher sources, and whole runs from a :class:`TrainConfig`."""
from kdprune.train.config import TrainConfig
from kdprune.train.loop import History, Trainer, evaluate, fit
from kdprune.train.run import train_run
from kdprune.train.teacher import OnlineTeacher, StoredTeacher

__all__ = ["fit", "evaluate", "History", "Trainer", "StoredTeacher", "OnlineTeacher", "TrainConfig", "train_run"]
