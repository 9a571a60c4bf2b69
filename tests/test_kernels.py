"""Packed-bit kernels: numba and numpy twins agree bit for bit with plain integer matmul.

``make numpy-floor`` runs this file again without numba on the lowest numpy pyproject.toml
allows: the pinned digests below are what every twin, on every supported numpy, must give.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitfleet import bitpack, kernels
from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer
from bitfleet.bitmlp import PackedLayer
from bitfleet.intmath import int_matmul
from bitfleet.kernels import HAVE_NUMBA, reference
from bitfleet.prng import hash32, splitmix64

# (9, 1100, 70): rows past a block of 8, inputs past one 1024-lane chunk, outputs past 64.
SHAPES = [
    (1, 1, 1),
    (3, 63, 5),
    (4, 64, 7),
    (5, 65, 3),
    (17, 130, 33),
    (64, 784, 100),
    (2, 200, 1),
    (9, 1100, 70),
]
TWINS = [reference] + ([kernels.fast] if kernels.fast is not None else [])


def _random_case(shape: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    batch, n, outputs = shape
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, size=(batch, n), dtype=np.uint8),
        "signs": rng.choice(np.array([-1, 1], dtype=np.int8), size=(batch, n)),
        "binary": rng.choice(np.array([-1, 1], dtype=np.int8), size=(outputs, n)),
        "ternary": rng.integers(-1, 2, size=(outputs, n)).astype(np.int8),
    }


@pytest.mark.skipif(
    os.environ.get("BITFLEET_NO_NUMBA", "") not in ("", "0"), reason="numba disabled on purpose"
)
def test_numba_is_present_in_the_test_environment() -> None:
    assert kernels.HAVE_NUMBA, "install the 'fast' extra: the twins must be compared"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_kernels_match_integer_matmul(shape: tuple[int, int, int], twin: object) -> None:
    case = _random_case(shape, seed=sum(shape))
    n = shape[1]
    x_bits = bitpack.pack_binary(case["signs"])
    w_bits = bitpack.pack_binary(case["binary"])
    positive, nonzero = bitpack.pack_ternary(case["ternary"])
    lanes = bitpack.pack_lanes(case["pixels"])
    expect = {
        "masked": case["pixels"].astype(np.int64) @ (case["ternary"] > 0).T,
        "binary": case["signs"].astype(np.int64) @ case["binary"].T,
        "ternary": case["signs"].astype(np.int64) @ case["ternary"].T,
    }
    got = {
        "masked": twin.masked_sums(lanes, bitpack.pack_bits(case["ternary"] > 0)),  # type: ignore[attr-defined]
        "binary": twin.binary_dense(x_bits, w_bits, n),  # type: ignore[attr-defined]
        "ternary": twin.ternary_dense(x_bits, positive, nonzero),  # type: ignore[attr-defined]
    }
    for name, result in got.items():
        assert result.dtype == np.int32, name
        np.testing.assert_array_equal(result, expect[name], err_msg=name)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 784])
def test_pack_unpack_round_trips_and_pads_with_zeros(n: int) -> None:
    rng = np.random.default_rng(n)
    binary = rng.choice(np.array([-1, 1], dtype=np.int8), size=(3, n))
    ternary = rng.integers(-1, 2, size=(3, n)).astype(np.int8)
    words = bitpack.pack_binary(binary)
    assert words.dtype == np.uint64 and words.shape == (3, bitpack.words_for(n))
    np.testing.assert_array_equal(bitpack.unpack_binary(words, n), binary)
    np.testing.assert_array_equal(
        bitpack.unpack_ternary(*bitpack.pack_ternary(ternary), n), ternary
    )
    padding = bitpack.unpack_bits(words, words.shape[1] * 64)[:, n:]
    assert not padding.any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_packed_uint8_layers_match_integer_matmul(
    shape: tuple[int, int, int], encoding: str
) -> None:
    """The uint8-input layer of inference and training: masked sums under +1 and -1 bits."""
    case = _random_case(shape, seed=sum(shape) + 1)
    layer = PackedLayer.from_values(case[encoding], encoding)
    result = layer.dense_uint8(case["pixels"])
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, case["pixels"].astype(np.int64) @ case[encoding].T)


def test_int_matmul_is_exact_on_every_engine() -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(-255, 256, size=(20, 30))
    large = rng.integers(-(2**20), 2**20, size=(30, 10))
    huge = rng.integers(-(2**40), 2**40, size=(30, 10))
    for b in (rng.integers(-1, 2, size=(30, 10)), large, huge):
        np.testing.assert_array_equal(int_matmul(small, b), small @ b)


_FALLBACK_TRAINING = (
    "import numpy as np\n"
    "from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer\n"
    "rng = np.random.default_rng(0)\n"
    "x = rng.integers(0, 256, size=(200, 70), dtype=np.uint8)\n"
    "y = rng.integers(0, 3, size=200)\n"
    "model = BitFlipTrainer([70, 16, 3], BitFlipConfig(epochs=1)).fit(x, y)\n"
    "predictions = model.predict(x).tolist()\n"
)


def test_kernels_fall_back_to_numpy_without_numba() -> None:
    """The numpy path trains the same model as this process's kernels (numba where present)."""
    code = (
        "from bitfleet import kernels\n"
        "assert not kernels.HAVE_NUMBA and kernels.binary_dense is kernels.reference.binary_dense\n"
        + _FALLBACK_TRAINING
        + "print(predictions)\n"
    )
    env = {**os.environ, "BITFLEET_NO_NUMBA": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    here: dict[str, Any] = {}
    exec(_FALLBACK_TRAINING, here)
    assert result.stdout.strip() == str(here["predictions"])


@pytest.mark.parametrize(("pre_shift", "shift"), [(0, 0), (0, 5), (3, 20), (0, 30), (31, 1)])
@pytest.mark.parametrize("zero_threshold", [0, 1, 32])
def test_counter_step_twins_are_bit_exact(pre_shift: int, shift: int, zero_threshold: int) -> None:
    """Both twins against the rule written out in int64: hash32 noise, shifts, clip."""
    rng = np.random.default_rng(shift + 100 * zero_threshold + 7 * pre_shift)
    shape = (37, 101)
    votes = rng.integers(-(2**31), 2**31, size=shape) if pre_shift == 31 else None
    if votes is None:
        votes = rng.integers(-500_000, 500_001, size=shape)
    multiplier = 3
    start = rng.integers(-128, 128, size=shape).astype(np.int16)
    index = np.arange(votes.size, dtype=np.uint64).reshape(shape)
    noise = hash32(((index + 12345) % 2**32).astype(np.uint32)).astype(np.int64) % (1 << shift)
    change = (((votes >> pre_shift) * multiplier) + noise) >> shift
    expected = np.clip(start.astype(np.int64) + change, -128, 127)
    for twin in TWINS:
        counters, weights = start.copy(), np.zeros(shape, dtype=np.int8)
        twin.counter_step(  # type: ignore[attr-defined]
            counters,
            weights,
            votes.astype(np.int32),
            multiplier,
            pre_shift,
            shift,
            12345,
            -128,
            127,
            zero_threshold,
        )
        np.testing.assert_array_equal(counters, expected)
        expected_weights = (expected >= zero_threshold).astype(np.int8) - (
            expected < -zero_threshold
        )
        np.testing.assert_array_equal(weights, expected_weights)


@pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_counter_step_refuses_shifts_outside_its_int32_pipeline(twin: object) -> None:
    counters, weights = np.zeros((2, 3), np.int16), np.zeros((2, 3), np.int8)
    votes = np.ones((2, 3), np.int32)
    for multiplier, pre_shift, shift in ((1, 0, 31), (1, -1, 3), (1, 0, -1), (1 << 30, 0, 3)):
        with pytest.raises(ValueError, match="out of range"):
            twin.counter_step(counters, weights, votes, multiplier, pre_shift, shift, 1, -8, 7, 0)  # type: ignore[attr-defined]


def test_bit_flip_steps_keep_huge_votes_inside_the_pipeline() -> None:
    """Votes near the int32 limit and the largest learning rate: the layer's pre-shift keeps
    (votes >> pre) * lr below 2**30, so the step moves counters by whole, bounded amounts."""
    layer = BitFlipTrainer([4, 3, 2], BitFlipConfig(state_bits=8)).layers[0]
    votes = np.array([[2**31 - 1, -(2**31), 0, 5]] * 3, dtype=np.int64)
    layer.step(votes, 256 * 2**8, key=3)
    assert layer.counters[:, 0].min() > 0 and layer.counters[:, 1].max() < 0
    assert layer.counters.min() >= layer.low and layer.counters.max() <= layer.high


@pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("error_bound", [7, 1 << 24])
def test_error_kernels_are_exact_integer_products(twin: object, error_bound: int) -> None:
    """Votes and attributed errors equal int64 matmul, with sparse errors as training makes
    them (most zero), in int32 exactly when no sum can leave it."""
    k: Any = twin
    rng = np.random.default_rng(error_bound)
    sparse = rng.random((60, 33)) < 0.15
    error = rng.integers(-error_bound, error_bound + 1, size=(60, 33)) * sparse
    activations = rng.integers(-255, 256, size=(60, 70)).astype(np.int16)
    signs = rng.choice(np.array([-1, 1], np.int8), size=(60, 70))
    weights = rng.choice(np.array([-1, 0, 1], np.int8), size=(33, 70))
    for a in (activations, signs):
        votes = k.error_votes(error, a)
        fits = 60 * int(np.abs(error).max()) * int(np.abs(a).max()) < 2**31
        assert votes.dtype == (np.int32 if fits else np.int64)
        np.testing.assert_array_equal(votes, error.T @ a.astype(np.int64))
    through = k.error_votes(error.T, weights)
    np.testing.assert_array_equal(through, error @ weights.astype(np.int64))
    assert k.error_votes(np.zeros_like(error), activations).any() == False  # noqa: E712


@pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_masked_sums_refuse_selections_shorter_than_the_inputs(twin: object) -> None:
    lanes = bitpack.pack_lanes(np.ones((2, 130), np.uint8))
    with pytest.raises(ValueError, match="a bit for every input"):
        twin.masked_sums(lanes, bitpack.pack_bits(np.ones((3, 60), bool)))  # type: ignore[attr-defined]


def test_lanes_hold_each_input_in_a_zero_padded_uint16() -> None:
    x = np.arange(1, 7, dtype=np.uint8).reshape(1, 6) * 40
    np.testing.assert_array_equal(
        bitpack.pack_lanes(x).view(np.uint16), [[40, 80, 120, 160, 200, 240, 0, 0]]
    )


def test_counter_step_takes_int32_votes_as_int64_ones() -> None:
    rng = np.random.default_rng(9)
    votes = rng.integers(-500, 501, size=(20, 30))
    results = []
    for twin in TWINS:
        for dtype in (np.int32, np.int64):
            counters = rng.integers(-128, 128, size=votes.shape).astype(np.int16) * 0
            weights = np.zeros(votes.shape, np.int8)
            twin.counter_step(counters, weights, votes.astype(dtype), 3, 0, 5, 7, -128, 127, 0)  # type: ignore[attr-defined]
            results.append(counters)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_counter_step_rounding_is_unbiased() -> None:
    votes = np.full((200, 500), 3, dtype=np.int64)
    counters = np.zeros(votes.shape, dtype=np.int16)
    weights = np.zeros(votes.shape, dtype=np.int8)
    kernels.counter_step(counters, weights, votes, 1, 0, 3, 99, -8, 7, 0)
    assert abs(counters.mean() - 3 / 8) < 0.01
    assert set(np.unique(counters).tolist()) == {0, 1}


def test_the_popcount_table_counts_every_bit() -> None:
    edges = [0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 0x8000000100000001]
    words = np.array(edges + [int(w) for w in _words(7, 26)], dtype=np.uint64).reshape(4, 8)
    expected = [sum(int(w).bit_count() for w in row) for row in words]
    assert reference.popcount_sum_table(words).tolist() == expected
    assert reference.popcount_sum_table(words[:, ::3]).tolist() == [
        sum(int(w).bit_count() for w in row) for row in words[:, ::3]
    ]
    assert reference.popcount_sum(words).dtype == np.int32
    assert reference.popcount_sum(words).tolist() == expected
    if hasattr(np, "bitwise_count"):
        assert reference.popcount_sum is reference.popcount_sum_native
        many = _words(8, 64, 33, 5)
        np.testing.assert_array_equal(
            reference.popcount_sum_table(many), reference.popcount_sum_native(many)
        )


def _words(seed: int, *shape: int) -> np.ndarray:
    """Inputs from the counter-based hash, not a Generator: the same on every numpy."""
    count = int(np.prod(shape))
    return splitmix64(np.arange(count, dtype=np.uint64) + np.uint64(seed)).reshape(shape)


def _ints(seed: int, low: int, high: int, *shape: int) -> np.ndarray:
    return (_words(seed, *shape) % np.uint64(high - low)).astype(np.int64) + low


def _kernel_outputs(twin: object) -> list[np.ndarray]:
    """Every kernel on fixed inputs, with shifts and dtypes of each kind."""
    k: Any = twin
    x, w, positive, nonzero = (_words(seed, 5, 13) for seed in (1, 2, 3, 4))
    outputs = [
        k.binary_dense(x, w, 13 * 64),
        k.ternary_dense(x, positive, nonzero),
        k.masked_sums(
            bitpack.pack_lanes(_ints(18, 0, 256, 9, 1030).astype(np.uint8)), _words(19, 5, 17)
        ),
    ]
    for pre_shift, shift in ((0, 0), (0, 5), (2, 30)):
        counters, weights = _ints(6, -128, 128, 7, 11).astype(np.int16), np.zeros((7, 11), np.int8)
        votes = _ints(7, -500, 501, 7, 11)
        k.counter_step(counters, weights, votes, 3, pre_shift, shift, 99, -128, 127, 1)
        outputs += [counters, weights]
    a = _ints(8, -128, 128, 6, 20).astype(np.int8)
    bias = _ints(10, -3000, 3000, 7).astype(np.int32)
    for w_dtype in (np.int8, np.int16):
        fixed_w = _ints(9, -128, 128, 20, 7).astype(w_dtype)
        for shift, relu, out_dtype in (
            (7, True, np.int8),
            (0, False, np.int32),
            (-1, False, np.int32),
        ):
            out = np.zeros((6, 7), out_dtype)
            k.fixed_dense(a, fixed_w, bias, shift, relu, out)
            outputs.append(out)
    for stochastic in (False, True):
        perturbed = _ints(11, -1000, 1000, 5, 37).astype(np.int16)
        coefs = np.array([3, -1, 2], np.int64)
        k.add_perturbations(
            perturbed, _words(12, 3), coefs, 11, 1 << 31, 5, 3, 77, stochastic, -1024, 1023
        )
        outputs.append(perturbed)
    acc, pend = _words(13, 4, 9), _words(14, 4, 9)
    k.carry_save_add(acc, pend, _words(15, 9), np.array([[0, 3], [1, 2]], np.int64))
    sliced = _words(16, 6, 9) & np.uint64(0x0F0F0F0F0F0F0F0F)
    k.bitsliced_add(sliced, _words(17, 9), 1)
    return [*outputs, acc, pend, sliced]


def _digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


# Measured with numba (numpy 2.4) and with the numpy twins on numpy 2.4 and 1.24: identical.
KERNELS_DIGEST = "fbf5d7b097f0aaafe602a3608b2224af3d2ee7f91e082510f5f0c0e5616305de"
TRAINED_DIGESTS = {
    "binary": "11fab4a3ec0cfe6201e2a9a082d5c392b486b5c619745c4b174dd7f1045aeb46",
    "ternary": "92cb1b22918b7484fb6d9e3b9f88aeb6990b3b9191ac740e205644b2c7026ea1",
}


@pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_kernel_gives_the_pinned_result_on_every_numpy(twin: object) -> None:
    assert _digest(_kernel_outputs(twin)) == KERNELS_DIGEST, f"numpy {np.__version__}"


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_training_gives_the_pinned_model_on_every_numpy(encoding: str) -> None:
    """The trainer around the kernels, too: shuffles, votes, rounding, packing."""
    x, y = _ints(20, 0, 256, 300, 70).astype(np.uint8), _ints(21, 0, 3, 300)
    config = BitFlipConfig(encoding=encoding, epochs=2, seed=5)
    model = BitFlipTrainer([70, 16, 3], config).fit(x, y)
    arrays = [model.input_offset]
    for layer in model.layers:
        arrays += [layer.positive] + ([] if layer.nonzero is None else [layer.nonzero])
    assert _digest(arrays) == TRAINED_DIGESTS[encoding], f"numpy {np.__version__}"


@pytest.mark.skipif(os.geteuid() != 0 or not HAVE_NUMBA, reason="needs root and numba")
def test_numba_loads_for_a_service_user_with_no_home_and_a_read_only_install(
    tmp_path: Path,
) -> None:
    """numba refused to load (no cache locator) for a user who can write neither beside the
    sources nor a home; the kernels give it a private cache directory instead."""
    uid = 10001
    cache = Path(tempfile.gettempdir()) / f"bitfleet-numba-{uid}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            sys.executable,
            "-c",
            "from bitfleet import kernels; print(kernels.HAVE_NUMBA)",
        ],
        env={**env, "HOME": "/nonexistent", "BITFLEET_NO_NUMBA": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    if "Permission denied" in done.stderr or "No module named 'bitfleet'" in done.stderr:
        # The checkout sits where that user cannot read it (e.g. under a mode-700 mktemp dir).
        pytest.skip(f"uid {uid} cannot run this install: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    info = cache.lstat()
    assert info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o700
