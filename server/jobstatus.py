"""Job statuses of the REST API: ``pending`` -> ``running`` -> one of :data:`TERMINAL`.

Kept free of pydantic so the CLI clients import it on an agent-only install.
"""

ACTIVE = ("pending", "running")
TERMINAL = ("completed", "failed", "cancelled")
