"""Peak memory of a call, measured with tracemalloc (numpy reports its buffers to it).

numba's own allocator is invisible to tracemalloc, so the kernels never allocate: their
wrappers pass numpy buffers in, and what is measured here is every byte they touch.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def peak_bytes(call: Callable[[], object]) -> int:
    """Peak bytes allocated while ``call`` runs, above what was allocated before it."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        call()
        return max(0, tracemalloc.get_traced_memory()[1] - before)
    finally:
        if started:
            tracemalloc.stop()
