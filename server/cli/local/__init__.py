"""Single-machine tools: train, evaluate, pretrain, the last-mile study, data and benchmarks.

They import only the library (``bitfleet``): no coordinator, broker or agent is involved.
"""
