"""Training: the loop (:func:`fit`), evaluation, the teacher sources, and whole runs from a config."""
from kdprune.train.config import TrainConfig
from kdprune.train.loop import History, evaluate, fit
from kdprune.train.run import train_run
from kdprune.train.teacher import OnlineTeacher, StoredTeacher

__all__ = ["fit", "evaluate", "History", "StoredTeacher", "OnlineTeacher", "TrainConfig", "train_run"]
