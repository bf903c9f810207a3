"""Exceptions kdprune raises for bad input. Each message names the problem and the fix."""


class KDPruneError(Exception):
    """Base class for kdprune's own errors."""


class DataError(KDPruneError, ValueError):
    """A dataset is missing, truncated, corrupted or inconsistent."""


class StoreError(KDPruneError, ValueError):
    """A teacher store is missing, incomplete, corrupted or does not match its use."""


class ConfigError(KDPruneError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class ProvenanceError(DataError, StoreError):
    """Two artefacts that meet (dataset, teacher, store, scores, subset, run) were made from different
    datasets. Raised by :func:`kdprune.provenance.require_same`; a DataError and a StoreError too."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the work done so far was saved; ``saved`` says what was saved and where.

    A KeyboardInterrupt, so code that handles Ctrl-C handles it; the ``kdprune`` command turns it into
    one line (what was saved, the command that resumes) and exit code 130."""

    def __init__(self, saved: str):
        super().__init__(saved)
        self.saved = saved
