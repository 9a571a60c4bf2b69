"""Vote tallies: bit-exact kernel twins, majority rules against brute force, merging,
serialization, refusal of bad input without a partial write, and the bench contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from bitfleet import kernels
from bitfleet.bitpack import pack_binary, pack_ternary, words_for
from bitfleet.frames import Tensor
from bitfleet.kernels import reference
from bitfleet.server.cli import main
from bitfleet.tally import (
    MAX_TOTAL_WEIGHT,
    LayerTally,
    ModelTally,
    TallyError,
    _feed_schedule,
)

TWINS = [reference] + ([kernels.fast] if kernels.fast is not None else [])
TWIN_IDS = [twin.__name__.rsplit(".", 1)[-1] for twin in TWINS]
SHAPES = [(1, 1), (3, 63), (2, 64), (4, 65), (5, 130), (1, 1000)]
VALUES = {"binary": np.array([-1, 1], dtype=np.int8), "ternary": np.array([-1, 0, 1], np.int8)}


@pytest.fixture(params=TWINS, ids=TWIN_IDS)
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Run the tally on one kernel twin (the dispatcher picks numba when it can)."""
    for name in ("carry_save_add", "bitsliced_add"):
        monkeypatch.setattr(kernels, name, getattr(request.param, name))
    yield request.param


def _packed(values: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "binary":
        return pack_binary(values)[None]
    return np.stack(pack_ternary(values))


def _random_values(
    rng: np.random.Generator, encoding: str, shape: tuple[int, int], count: int
) -> list[np.ndarray]:
    return [rng.choice(VALUES[encoding], size=shape) for _ in range(count)]


def _brute_force_vote(
    values: list[np.ndarray], weights: list[int], previous: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted votes for -1/0/+1 and the strict-majority winner, ties keeping previous."""
    votes = np.stack(
        [
            sum(w * (v == k).astype(np.int64) for v, w in zip(values, weights, strict=True))
            for k in (-1, 0, 1)
        ]
    )
    winners = votes == votes.max(axis=0)
    decided = winners.sum(axis=0) == 1
    return votes, np.where(decided, winners.argmax(axis=0) - 1, previous).astype(np.int8)


def _filled(
    encoding: str, shape: tuple[int, int], values: list[np.ndarray], weights: list[int]
) -> LayerTally:
    tally = LayerTally(encoding, *shape)
    for v, w in zip(values, weights, strict=True):
        tally.add(_packed(v, encoding), w)
    return tally


def _lane_values(acc: np.ndarray, pend: np.ndarray, fed: int) -> np.ndarray:
    """Per-lane counts of carry-save stacks, as Python ints (object array)."""
    lanes = acc.shape[1] * 64
    total = np.zeros(lanes, dtype=object)
    for level in range(acc.shape[0]):
        planes = [acc[level]] + ([pend[level]] if fed >> level & 1 else [])
        for plane in planes:
            bits = np.unpackbits(plane.view(np.uint8), bitorder="little").astype(object)
            total += bits * (1 << level)
    return total


# --- kernels -------------------------------------------------------------------------


@pytest.mark.parametrize("lanes", [1, 7, 64, 257])
@pytest.mark.parametrize("weight", [1, 2, 3, 255, 1000, (1 << 40) + 5])
def test_carry_save_add_twins_are_bit_exact_and_add(lanes: int, weight: int) -> None:
    rng = np.random.default_rng(lanes * 7 + weight % 1000)
    fed = int(rng.integers(0, 1 << 20))
    levels = (fed + weight).bit_length()
    acc = rng.integers(0, 1 << 64, size=(levels, lanes), dtype=np.uint64)
    pend = rng.integers(0, 1 << 64, size=(levels, lanes), dtype=np.uint64)
    x = rng.integers(0, 1 << 64, size=lanes, dtype=np.uint64)
    feeds = _feed_schedule(fed, weight)
    results = []
    for module in TWINS:
        a, p = acc.copy(), pend.copy()
        module.carry_save_add(a, p, x, feeds)  # type: ignore[attr-defined]
        results.append((a, p))
    x_bits = np.unpackbits(x.view(np.uint8), bitorder="little").astype(object)
    after = _lane_values(*results[0], fed + weight)
    np.testing.assert_array_equal(after, _lane_values(acc, pend, fed) + weight * x_bits)
    for a, p in results[1:]:
        np.testing.assert_array_equal(a, results[0][0])
        np.testing.assert_array_equal(p, results[0][1])


@pytest.mark.parametrize("lanes", [1, 5, 130])
@pytest.mark.parametrize("start", [0, 1, 7])
def test_bitsliced_add_twins_are_bit_exact_and_add(lanes: int, start: int) -> None:
    rng = np.random.default_rng(lanes + 100 * start)
    planes = rng.integers(0, 1 << 64, size=(12, lanes), dtype=np.uint64)
    planes[10:] = 0  # room for the sum
    x = rng.integers(0, 1 << 64, size=lanes, dtype=np.uint64)
    results = []
    for module in TWINS:
        out = planes.copy()
        module.bitsliced_add(out, x, start)  # type: ignore[attr-defined]
        results.append(out)
    x_bits = np.unpackbits(x.view(np.uint8), bitorder="little").astype(object)
    expected = _lane_values(planes, planes, 0) + (x_bits << start)
    np.testing.assert_array_equal(_lane_values(results[0], results[0], 0), expected)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_tally_runs_on_numpy_alone() -> None:
    code = (
        "import numpy as np\n"
        "from bitfleet import kernels\n"
        "from bitfleet.bitpack import pack_binary\n"
        "from bitfleet.tally import LayerTally\n"
        "assert kernels.carry_save_add is kernels.reference.carry_save_add\n"
        "tally = LayerTally('binary', 2, 70)\n"
        "for sign in (1, 1, -1):\n"
        "    tally.add(pack_binary(np.full((2, 70), sign))[None])\n"
        "print(int(tally.result(np.full((2, 70), -1, dtype=np.int8)).sum()))\n"
    )
    env = {**os.environ, "BITFLEET_NO_NUMBA": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "140"


# --- votes ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_majority_matches_brute_force(
    twin: object, encoding: str, shape: tuple[int, int], weighted: bool
) -> None:
    rng = np.random.default_rng(sum(shape) + weighted)
    count = 9 if weighted else 10  # an even unweighted count makes ties likely
    values = _random_values(rng, encoding, shape, count)
    weights = rng.integers(1, 50, size=count).tolist() if weighted else [1] * count
    previous = rng.choice(VALUES[encoding], size=shape)
    tally = _filled(encoding, shape, values, weights)
    votes, expected = _brute_force_vote(values, weights, previous)
    np.testing.assert_array_equal(tally.counts(), votes)
    np.testing.assert_array_equal(tally.result(previous), expected)
    assert tally.total_weight == sum(weights)
    assert (tally.counts().sum(axis=0) == sum(weights)).all()


@pytest.mark.parametrize("weights", [[1, 2, 2**33, 7], [2**40 + 1, 2**40 - 1, 3]])
def test_large_weights_count_exactly(twin: object, weights: list[int]) -> None:
    rng = np.random.default_rng(len(weights))
    values = _random_values(rng, "ternary", (3, 70), len(weights))
    previous = rng.choice(VALUES["ternary"], size=(3, 70))
    tally = _filled("ternary", (3, 70), values, weights)
    votes, expected = _brute_force_vote(values, weights, previous)
    np.testing.assert_array_equal(tally.counts(), votes)
    np.testing.assert_array_equal(tally.result(previous), expected)


def test_binary_even_split_keeps_previous(twin: object) -> None:
    up, down = np.ones((2, 65), dtype=np.int8), -np.ones((2, 65), dtype=np.int8)
    previous = np.where(np.arange(65) % 2 == 0, 1, -1).astype(np.int8)[None].repeat(2, axis=0)
    tally = _filled("binary", (2, 65), [up, down, down], [2, 1, 1])
    np.testing.assert_array_equal(tally.result(previous), previous)
    tally.add(_packed(up, "binary"))
    np.testing.assert_array_equal(tally.result(previous), up)


@pytest.mark.parametrize(
    ("votes", "weights", "expected"),
    [
        ([1, -1], [1, 1], None),  # +1 and -1 tie, no zero votes
        ([1, 0], [3, 3], None),  # +1 and 0 tie
        ([-1, 0], [2, 2], None),  # -1 and 0 tie
        ([1, 0, -1], [1, 1, 1], None),  # three-way tie
        ([1, 1, 0, -1], [1, 1, 1, 1], 1),  # +1 wins 2:1:1
        ([1, 0, -1], [1, 1, 3], -1),  # weight decides
        ([1, 0, 0, -1], [1, 1, 1, 1], 0),  # zero wins
    ],
)
def test_ternary_ties_keep_previous(
    twin: object, votes: list[int], weights: list[int], expected: int | None
) -> None:
    values = [np.full((1, 3), v, dtype=np.int8) for v in votes]
    tally = _filled("ternary", (1, 3), values, weights)
    previous = np.array([[-1, 0, 1]], dtype=np.int8)
    want = previous if expected is None else np.full((1, 3), expected, dtype=np.int8)
    np.testing.assert_array_equal(tally.result(previous), want)


def test_empty_tally_keeps_previous() -> None:
    previous = np.array([[1, -1, 1]], dtype=np.int8)
    np.testing.assert_array_equal(LayerTally("binary", 1, 3).result(previous), previous)
    assert LayerTally("ternary", 1, 3).counts().sum() == 0


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_result_planes_are_the_packed_result_with_zero_padding(twin: object, encoding: str) -> None:
    rng = np.random.default_rng(3)
    values = _random_values(rng, encoding, (4, 70), 6)
    previous = rng.choice(VALUES[encoding], size=(4, 70))
    tally = _filled(encoding, (4, 70), values, [1, 2, 3, 1, 2, 3])
    planes = tally.result_planes(_packed(previous, encoding))
    np.testing.assert_array_equal(planes, _packed(tally.result(previous), encoding))
    assert planes.dtype == np.uint64 and planes.shape == (len(planes), 4, words_for(70))


def test_step_vote(twin: object) -> None:
    increase, decrease = np.ones((1, 4), dtype=np.int8), -np.ones((1, 4), dtype=np.int8)
    tally = _filled("ternary", (1, 4), [increase, increase, decrease, decrease], [1, 2, 1, 1])
    vote = tally.step_vote()
    np.testing.assert_array_equal(vote, increase)
    tally.add(_packed(decrease, "ternary"))
    np.testing.assert_array_equal(tally.step_vote(), np.zeros((1, 4)))  # a tie: no step
    with pytest.raises(TallyError, match="binary"):
        LayerTally("binary", 1, 4).step_vote()


# --- merge ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_merged_partial_tallies_equal_one_tally(twin: object, encoding: str) -> None:
    rng = np.random.default_rng(11)
    shape = (3, 100)
    values = _random_values(rng, encoding, shape, 13)
    weights = [1, 1, 1, 1000, 3, 5, 1, 2**20, 7, 1, 1, 64, 9]
    previous = rng.choice(VALUES[encoding], size=shape)
    whole = _filled(encoding, shape, values, weights)
    # Partials of very different plane counts, one empty, merged in a tree.
    small = _filled(encoding, shape, values[:1], weights[:1])
    heavy = _filled(encoding, shape, values[1:9], weights[1:9])
    rest = _filled(encoding, shape, values[9:], weights[9:])
    empty = LayerTally(encoding, *shape)
    heavy.merge(empty)
    small.merge(heavy)
    empty.merge(small)
    empty.merge(rest)
    np.testing.assert_array_equal(empty.counts(), whole.counts())
    np.testing.assert_array_equal(empty.result(previous), whole.result(previous))
    assert empty.total_weight == whole.total_weight
    # Merging keeps the tally usable: add more to both and compare again.
    extra = _random_values(rng, encoding, shape, 3)
    for v in extra:
        empty.add(_packed(v, encoding), 5)
        whole.add(_packed(v, encoding), 5)
    np.testing.assert_array_equal(empty.counts(), whole.counts())


def test_merging_a_tally_into_itself_doubles_it(twin: object) -> None:
    rng = np.random.default_rng(5)
    values = _random_values(rng, "ternary", (2, 64), 5)
    tally = _filled("ternary", (2, 64), values, [1, 2, 3, 4, 5])
    doubled = _filled("ternary", (2, 64), values * 2, [1, 2, 3, 4, 5] * 2)
    tally.merge(tally)
    np.testing.assert_array_equal(tally.counts(), doubled.counts())


def test_merge_refuses_a_different_tensor() -> None:
    tally = LayerTally("binary", 2, 64)
    tally.add(pack_binary(np.ones((2, 64)))[None])
    before = tally.to_bytes()
    for other in (LayerTally("ternary", 2, 64), LayerTally("binary", 2, 65), "tally"):
        with pytest.raises(TallyError):
            tally.merge(other)  # type: ignore[arg-type]
    assert tally.to_bytes() == before


# --- serialization -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_layer_tally_round_trips_through_bytes(twin: object, encoding: str) -> None:
    rng = np.random.default_rng(2)
    values = _random_values(rng, encoding, (3, 77), 7)
    tally = _filled(encoding, (3, 77), values, [3, 1, 4, 1, 5, 9, 2])  # levels pending
    restored = LayerTally.from_bytes(tally.to_bytes())
    assert (restored.encoding, restored.shape) == (encoding, (3, 77))
    assert restored.total_weight == tally.total_weight
    np.testing.assert_array_equal(restored.counts(), tally.counts())
    for t in (tally, restored):  # both keep counting identically
        t.add(_packed(values[0], encoding), 6)
    assert restored.to_bytes() == tally.to_bytes()
    empty = LayerTally.from_bytes(LayerTally(encoding, 1, 1).to_bytes())
    assert empty.total_weight == 0


def _reseal(blob: bytes) -> bytes:
    """Recompute a blob's CRC so a crafted defect reaches the checks behind it."""
    body = blob[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def _layer_blob_defects() -> dict[str, tuple[bytes, str]]:
    tally = LayerTally("ternary", 2, 70)
    tally.add(np.stack(pack_ternary(np.ones((2, 70), dtype=np.int8))), 5)
    blob = tally.to_bytes()
    planes_at = 8 + 20  # prefix + record header
    lanes = 2 * words_for(70)
    flipped = bytearray(blob)
    flipped[planes_at + 3] ^= 0xFF
    heavy = bytearray(blob)
    heavy[8 + 12 : 8 + 20] = (4).to_bytes(8, "little")  # total weight 4 < counts of 5
    padding = bytearray(blob)
    padding[planes_at + 8 * (words_for(70) - 1) + 7] |= 0x80  # lane 127 of row 0
    positive_only = bytearray(blob)
    nonzero_start = planes_at + 3 * lanes * 8  # counters x levels(5 -> 3) x lanes
    positive_only[nonzero_start : nonzero_start + 8] = bytes(8)  # positives > nonzeros
    return {  # defect: (blob, what the error says)
        "not bytes": ("blob", "must be bytes"),  # type: ignore[dict-item]
        "empty": (b"", "truncated"),
        "truncated": (blob[:-9], "checksum"),
        "bit flip": (bytes(flipped), "checksum"),
        "magic": (_reseal(b"XXXX" + blob[4:]), "magic"),
        "model magic": (_reseal(b"BFTM" + blob[4:]), "magic"),
        "version": (_reseal(blob[:4] + b"\x09" + blob[5:]), "version 9"),
        "encoding code": (_reseal(blob[:8] + b"\x07" + blob[9:]), "encoding code 7"),
        "zero rows": (_reseal(blob[:12] + bytes(4) + blob[16:]), "rows and columns"),
        "short planes": (_reseal(blob[:-12]), "truncated"),
        "extra bytes": (_reseal(blob[:-4] + bytes(8) + blob[-4:]), "8 extra bytes"),
        "counts above total": (_reseal(bytes(heavy)), "than the total weight"),
        "padding bits": (_reseal(bytes(padding)), "padding"),
        "positives above nonzeros": (_reseal(bytes(positive_only)), "than its nonzero"),
    }


@pytest.mark.parametrize("defect", sorted(_layer_blob_defects()))
def test_bad_layer_blobs_raise_tally_error(defect: str) -> None:
    blob, message = _layer_blob_defects()[defect]
    with pytest.raises(TallyError, match=message):
        LayerTally.from_bytes(blob)


def _model(encoding: str = "binary") -> ModelTally:
    return ModelTally.for_tensors({"w1": (encoding, 4, 70), "w2": ("ternary", 3, 64)})


def _frame_tensors(rng: np.random.Generator, model: ModelTally) -> dict[str, Tensor]:
    tensors = {}
    for name, layer in model.layers.items():
        data = _packed(rng.choice(VALUES[layer.encoding], size=layer.shape), layer.encoding)
        data.flags.writeable = False  # as decoded from a frame
        tensors[name] = Tensor(name, layer.encoding, layer.shape, data)
    return tensors


def test_model_tally_counts_merges_and_round_trips(twin: object) -> None:
    rng = np.random.default_rng(8)
    whole, first, second = _model(), _model(), _model()
    for index in range(6):
        tensors = _frame_tensors(rng, whole)
        whole.add_frame_tensors(tensors, index + 1)
        (first if index % 2 else second).add_frame_tensors(tensors, index + 1)
    shipped = ModelTally.from_bytes(second.to_bytes())
    first.merge(shipped)
    assert first.total_weight == whole.total_weight == 21
    previous = {name: np.zeros(layer.shape, np.int8) for name, layer in whole.layers.items()}
    previous["w1"] += 1
    expected = whole.result(previous)
    for name, voted in first.result(previous).items():
        np.testing.assert_array_equal(voted, expected[name])
        np.testing.assert_array_equal(first.layers[name].counts(), whole.layers[name].counts())
    packed = whole.result_planes(
        {n: _packed(v, whole.layers[n].encoding) for n, v in previous.items()}
    )
    assert set(packed) == {"w1", "w2"}
    assert first.nbytes > 0
    with pytest.raises(TallyError, match="w1"):
        first.step_votes()
    assert set(ModelTally.for_tensors({"s": ("ternary", 1, 5)}).step_votes()) == {"s"}


def test_bad_model_blobs_raise_tally_error() -> None:
    model = _model()
    model.add_frame_tensors(_frame_tensors(np.random.default_rng(0), model), 3)
    blob = model.to_bytes()
    name_at = 8 + 4 + 2
    defects = [
        blob[:-1],
        _reseal(blob[:8] + (3).to_bytes(4, "little") + blob[12:]),  # one layer too many
        _reseal(blob[:8] + (1).to_bytes(4, "little") + blob[12:]),  # trailing layer bytes
        _reseal(blob[:name_at] + b"\xff\xfe" + blob[name_at + 2 :]),  # not UTF-8
        _reseal(blob[:name_at] + b"w2" + blob[name_at + 2 :]),  # a name twice
        _reseal(b"BFTL" + blob[4:]),
        LayerTally("binary", 1, 1).to_bytes(),
    ]
    for defect in defects:
        with pytest.raises(TallyError):
            ModelTally.from_bytes(defect)
    assert ModelTally.from_bytes(blob).to_bytes() == blob


# --- refusals leave the tally unchanged ----------------------------------------------


def test_invalid_payloads_are_refused_without_a_partial_write() -> None:
    tally = LayerTally("ternary", 2, 70)
    good = np.stack(pack_ternary(np.ones((2, 70), dtype=np.int8)))
    tally.add(good, 2)
    before = tally.to_bytes()
    padded = good.copy()
    padded[1, 1, -1] |= np.uint64(1 << 63)
    bad_payloads = [
        good.astype(np.int64),  # wrong dtype
        good.tolist(),  # not an array
        good[:1],  # a binary payload for a ternary tally
        good[:, :1],  # too few rows
        np.zeros((2, 2, 3), dtype=np.uint64),  # too many words
        good[0],  # 2-D
        padded,  # nonzero padding bits
    ]
    for payload in bad_payloads:
        with pytest.raises(TallyError):
            tally.add(payload)  # type: ignore[arg-type]
    for weight in (0, -1, 1.5, True, "2", MAX_TOTAL_WEIGHT):
        with pytest.raises(TallyError):
            tally.add(good, weight)  # type: ignore[arg-type]
    assert tally.to_bytes() == before


def test_frame_tensors_are_all_checked_before_any_is_counted() -> None:
    rng = np.random.default_rng(4)
    model = _model()
    model.add_frame_tensors(_frame_tensors(rng, model), 2)
    before = model.to_bytes()
    good = _frame_tensors(rng, model)
    w2 = good["w2"]
    bad_frames = [
        {"w1": good["w1"]},  # missing w2
        {**good, "bias": good["w1"]},  # an unexpected tensor
        {**good, "w2": Tensor("w2", "binary", w2.shape, w2.data[:1])},  # wrong encoding
        {**good, "w2": Tensor("w2", "ternary", (3, 65), w2.data)},  # wrong shape
        {**good, "w2": Tensor("w2", "ternary", w2.shape, w2.data[:, :2])},  # data too short
    ]
    for tensors in bad_frames:
        with pytest.raises(TallyError):
            model.add_frame_tensors(tensors, 1)
    with pytest.raises(TallyError):
        model.add_frame_tensors(good, 0)
    assert model.to_bytes() == before
    with pytest.raises(TallyError, match="previous"):
        model.result({"w1": np.ones((4, 70), np.int8)})


def test_bad_previous_and_specs_are_refused() -> None:
    tally = LayerTally("binary", 1, 3)
    for previous in (
        np.zeros((1, 3), np.int8),  # 0 is not binary
        np.ones((1, 4), np.int8),
        np.ones((1, 3), np.float32),
        [[1, 1, 1]],
    ):
        with pytest.raises(TallyError):
            tally.result(previous)  # type: ignore[arg-type]
    with pytest.raises(TallyError):
        LayerTally("ternary", 1, 3).result(np.full((1, 3), 2, np.int8))
    for spec in (("int8", 1, 3), ("binary", 0, 3), ("binary", 1, 2**25), ("binary", 1.0, 3)):
        with pytest.raises(TallyError):
            LayerTally(*spec)  # type: ignore[arg-type]
    for specs in ({}, {"w": ("binary", 1)}, {"w": ("binary", 1, -3)}):
        with pytest.raises(TallyError):
            ModelTally.for_tensors(specs)  # type: ignore[arg-type]
    uneven = LayerTally("binary", 1, 3)
    uneven.add(pack_binary(np.ones((1, 3)))[None])
    with pytest.raises(TallyError, match="total weights"):
        ModelTally({"a": uneven, "b": LayerTally("binary", 1, 3)})


# --- bench ---------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--weighted", "--encoding", "ternary"]])
def test_bench_aggregate_json_contract(
    capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    argv = ["bench", "aggregate", "--payloads", "5", "--weights", "1000", "--repeats", "1"]
    assert main([*argv, *extra, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for field in ("speedup", "bytes_per_second", "baseline_seconds", "tally_seconds"):
        assert isinstance(result[field], (int, float)) and result[field] > 0, field
    assert result["payloads"] == 5 and result["weights"] == 1000
    assert result["identical"] is True
    assert result["numba"] is kernels.HAVE_NUMBA
    assert result["payload_bytes"] == 8 * words_for(1000) * (2 if extra else 1)


def test_bench_aggregate_refuses_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "aggregate", "--payloads", "0", "--json"]) == 2
    assert "--payloads" in capsys.readouterr().err


@pytest.mark.parametrize("module", TWINS, ids=TWIN_IDS)
def test_kernels_refuse_writes_outside_the_stacks(module: object) -> None:
    acc = np.zeros((3, 5), dtype=np.uint64)
    x = np.ones(5, dtype=np.uint64)
    with pytest.raises(IndexError):
        module.carry_save_add(acc, acc.copy(), x, np.array([[0, 3]]))  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        module.carry_save_add(acc, acc.copy(), x[:3], np.array([[0, 0]]))  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        module.bitsliced_add(acc, x[:3], 0)  # type: ignore[attr-defined]
