"""Counter-based integer hashes every random draw of bitfleet comes from: splitmix64, and
hash32 where a kernel wants 32-bit lanes (the bit-flip rounding noise).

Random bits depend only on (key, index), never on generator state, so the numpy and numba
kernel twins (the numba one inlines the same constants), the QZO perturbations and the data
shifts draw identical numbers on every machine and numpy version.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
HASH32_MIX1 = np.uint32(0x7FEB352D)
HASH32_MIX2 = np.uint32(0x846CA68B)


def splitmix64(counter: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """A fixed bijective hash of each counter value (Steele, Lea and Flood's splitmix64)."""
    with np.errstate(over="ignore"):
        z = counter + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def hash32(counter: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """A fixed bijective 32-bit hash (Wellons' lowbias32). Its 32-bit multiplies vectorize
    on AVX2 and NEON, which have no 64-bit multiply: 3x faster than splitmix64 in the
    bit-flip counter update, measured."""
    z = counter ^ (counter >> np.uint32(16))
    z = z * HASH32_MIX1
    z = z ^ (z >> np.uint32(15))
    z = z * HASH32_MIX2
    return z ^ (z >> np.uint32(16))
