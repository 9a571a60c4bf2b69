"""bitfleet coordinator side: the ``bitfleet`` CLI, and (later) the REST service."""
