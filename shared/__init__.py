"""bitfleet's common core: bit packing, kernels, models, trainers, data sets, file format.

Imports numpy only (numba when present). Never imports ``server`` or ``edge_agent``.
"""

__version__ = "0.1.0"
