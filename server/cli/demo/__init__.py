"""The demo harness: it starts all three rooms (a broker, the coordinator, agent processes)
on this machine, so it is neither coordinator nor agent code. ``cluster`` is also the
process-level test tier's harness."""
