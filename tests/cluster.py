"""The real parts integration tests start (shared with ``bitfleet demo``)."""

from bitfleet.server.cli.demo.cluster import Broker, Coordinator, free_port

__all__ = ["Broker", "Coordinator", "free_port"]
