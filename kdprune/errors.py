"""Exceptions kdprune raises for bad input. Each message names the problem and the fix."""


class KDPruneError(Exception):
    """Base class for kdprune's own errors."""


class DataError(KDPruneError, ValueError):
    """A dataset is missing, truncated, corrupted or inconsistent."""


class StoreError(KDPruneError, ValueError):
    """A teacher store is missing, incomplete, corrupted or does not match its use."""


class ConfigError(KDPruneError, ValueError):
    """A configuration value is out of range or inconsistent with another."""
