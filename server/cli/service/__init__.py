"""The coordinator and its clients: ``coordinator``, ``jobs``, ``agents`` and ``tls``."""
