"""Job statuses of the REST API: ``pending`` -> ``running`` -> one of :data:`TERMINAL`.

Defined with the Python client (``bitfleet.client``), which needs them and may not import
the server; free of pydantic, so the CLI clients import them on an agent-only install.
"""

from bitfleet.client import ACTIVE, TERMINAL

__all__ = ["ACTIVE", "TERMINAL"]
