"""The coordinator's own error for what is not there (the API answers it with 404)."""

from bitfleet.errors import BitfleetError


class NotFound(BitfleetError):
    """A job, round model or agent that does not exist (or that the caller may not see)."""
