"""Training: the loop (:func:`fit`), evaluation, and the teacher sources."""
from kdprune.train.loop import History, evaluate, fit
from kdprune.train.teacher import OnlineTeacher, StoredTeacher

__all__ = ["fit", "evaluate", "History", "StoredTeacher", "OnlineTeacher"]
