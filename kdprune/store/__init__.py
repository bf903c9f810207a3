"""The teacher-logit store: teacher outputs computed once per sample (and per augmented view), read
back by sample id at memory speed. Format: docs/store-format.md."""
from kdprune.store.reader import TeacherStore
from kdprune.store.writer import StoreWriter

__all__ = ["TeacherStore", "StoreWriter"]
