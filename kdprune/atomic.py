"""Files that readers never see half-written: write a temporary sibling, fsync, rename."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """Open ``path`` (str or os.PathLike) for writing through a temporary sibling that replaces it only
    when the ``with`` block ends without an exception (after flush + fsync); on an exception the old
    file, if any, is left as it was and the temporary is removed."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
