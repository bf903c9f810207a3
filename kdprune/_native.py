"""Loads the C++ extension ``kdprune._C`` once, with an error that says how to build it."""
import functools


@functools.lru_cache(maxsize=None)
def load():
    """Import ``kdprune._C`` (registering ``torch.ops.kdprune.*``) and return the module."""
    import torch  # noqa: F401  (the extension links against torch's libraries)

    try:
        from kdprune import _C
    except ImportError as err:
        raise ImportError(
            "kdprune's C++ extension (kdprune._C) is not built. Build it with "
            "`pip install -e . --no-build-isolation` (or `make install`) from the repository root; "
            f"the import failed with: {err}"
        ) from err
    return _C


def available() -> bool:
    try:
        load()
        return True
    except ImportError:
        return False
