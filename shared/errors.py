"""Typed errors for user mistakes: each says what is wrong and how to fix it.

The CLIs and services catch :class:`BitfleetError` and show its message instead of a
traceback; anything else escaping is a bug in bitfleet.
"""


class BitfleetError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option)."""


class DataError(BitfleetError):
    """A data set is missing, malformed or inconsistent."""


class ModelFileError(BitfleetError):
    """A model file or frame is corrupted, truncated or not a bitfleet model."""


class ConfigError(BitfleetError):
    """Options that do not fit together (e.g. a layer shape that does not match the data)."""
