"""Fixed-point models: bit-exact kernels, integer-only inference, quantization, model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitfleet import kernels
from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer
from bitfleet.datasets import Dataset, load_dataset
from bitfleet.errors import ConfigError, ModelFileError
from bitfleet.fixedpoint import FixedLayer, FixedMLP, dequantize, qmax, quantize
from bitfleet.floatmlp import FloatConfig, FloatMLP, FloatTrainer
from bitfleet.frames import KIND_MODEL, Tensor, decode_frame, encode_frame
from bitfleet.intmath import int_matmul
from bitfleet.kernels import reference
from bitfleet.modelfile import load_model, model_from_frame, model_to_frame, save_model
from bitfleet.training import EpochReport

TWINS = [reference] + ([kernels.fast] if kernels.fast is not None else [])
# (batch, inputs, outputs): non-multiples of 8 and 64, and more than 256 inputs (the numba
# kernel widens its int32 partial sums every 256 inputs).
SHAPES = [(1, 1, 1), (3, 7, 5), (5, 65, 3), (17, 130, 33), (64, 784, 128), (2, 1000, 10)]
# (shift, relu, output dtype): the last layer (raw int32), hidden layers (shift, ReLU, int8).
MODES = [(0, False, np.int32), (9, True, np.int8), (12, False, np.int8), (-2, False, np.int32)]


def expected_dense(
    a: np.ndarray, w: np.ndarray, bias: np.ndarray, shift: int, relu: bool, dtype: type
) -> np.ndarray:
    """The documented definition, in plain int64 Python arithmetic."""
    acc = a.astype(np.int64) @ w.astype(np.int64) + bias
    if relu:
        acc = np.maximum(acc, 0)
    if shift > 0:
        acc = (acc + (1 << (shift - 1))) >> shift
    elif shift < 0:
        acc = acc << -shift
    info = np.iinfo(dtype)
    return np.clip(acc, info.min, info.max)


@pytest.fixture(scope="module")
def digits_float() -> tuple[FloatMLP, Dataset]:
    data = load_dataset("digits")
    model = FloatTrainer([64, 32, 10], FloatConfig(epochs=4, seed=0)).fit(
        data.x_train, data.y_train
    )
    return model, data


def test_every_model_scores_in_chunks_as_it_scores_row_by_row(
    digits_float: tuple[FloatMLP, Dataset],
) -> None:
    """Scoring is written once for all model types: chunk edges must not change a score.

    Integer scores are exact whatever the batch; float logits move in their last bits with
    the batch size (BLAS), so the float baseline is pinned to 4,096-row passes.
    """
    float_model, data = digits_float
    bit_model = BitFlipTrainer([64, 16, 10], BitFlipConfig(epochs=1)).fit(
        data.x_train, data.y_train
    )
    x = np.concatenate([data.x_test] * 12)[: 2 * FloatMLP.CHUNK_ROWS + 3]
    y = np.concatenate([data.y_test] * 12)[: len(x)]
    passes = [x[i : i + 4096] for i in range(0, len(x), 4096)]
    logits = [float_model.forward(float_model.prepare(rows))[-1] for rows in passes]
    np.testing.assert_array_equal(float_model.scores(x), np.concatenate(logits))
    for model in (float_model, quantize(float_model, data.x_train), bit_model):
        scores = model.scores(x)
        if model is not float_model:
            rows = [model.scores(x[i : i + 1]) for i in range(0, len(x), 97)]
            np.testing.assert_array_equal(scores[::97], np.concatenate(rows))
        np.testing.assert_array_equal(model.predict(x), np.argmax(scores, axis=1))
        assert model.accuracy(x, y) == np.mean(np.argmax(scores, axis=1) == y)
        empty = model.scores(x[:0])
        assert empty.shape == (0, 10) and empty.dtype == scores.dtype
        assert model.predict(x[:0]).shape == (0,) and model.accuracy(x[:0], y[:0]) == 0.0
        with pytest.raises(ConfigError, match=r"the model expects \(batch, 64\)"):
            model.scores(x[:, :63])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_dtype", [np.int16, np.int8])
def test_fixed_dense_twins_are_bit_exact(shape: tuple[int, int, int], weight_dtype: type) -> None:
    batch, inputs, outputs = shape
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(-128, 128, size=(batch, inputs)).astype(np.int8)
    a[0, :] = -128  # the extreme corner of the int8 range
    limit = int(np.iinfo(weight_dtype).max)
    w = rng.integers(-limit, limit + 1, size=(inputs, outputs)).astype(weight_dtype)
    bias = rng.integers(-(2**24), 2**24, size=outputs).astype(np.int32)
    for shift, relu, dtype in MODES:
        expect = expected_dense(a, w, bias, shift, relu, dtype)
        for twin in TWINS:
            out = np.empty((batch, outputs), dtype=dtype)
            twin.fixed_dense(a, w, bias, shift, relu, out)  # type: ignore[attr-defined]
            np.testing.assert_array_equal(out, expect, err_msg=f"{twin.__name__} {shift}")


def test_fixed_dense_saturates_instead_of_wrapping() -> None:
    inputs = 1000  # 1000 * 128 * 32767 > 2**31: the exact sum exceeds int32
    a = np.full((2, inputs), -128, dtype=np.int8)
    a[1] = 127
    w = np.full((inputs, 3), -32767, dtype=np.int16)
    bias = np.zeros(3, dtype=np.int32)
    for twin in TWINS:
        scores = np.empty((2, 3), dtype=np.int32)
        twin.fixed_dense(a, w, bias, 0, False, scores)
        assert scores[0].tolist() == [2**31 - 1] * 3 and scores[1].tolist() == [-(2**31)] * 3
        hidden = np.empty((2, 3), dtype=np.int8)
        twin.fixed_dense(a, w, bias, 4, True, hidden)
        assert hidden[0].tolist() == [127] * 3 and hidden[1].tolist() == [0] * 3


def test_int_matmul_bound_counts_the_most_negative_value() -> None:
    """np.abs(int8 -128) is -128: the bound must not drop to the float32 engine then."""
    a = np.full((1, 1000), -128, dtype=np.int8)
    a[0, 0] = 1
    b = np.full((1000, 1), -32768, dtype=np.int16)
    b[0] = 1
    assert int_matmul(a, b)[0, 0] == int((a.astype(np.int64) @ b)[0, 0])


def _manual_scores(model: FixedMLP, x: np.ndarray) -> np.ndarray:
    """Integer-only inference written out with Python ints per layer (the spec)."""
    a = np.clip((x.astype(np.int64) - model.input_offset + 1) >> 1, -127, 127)
    for index, layer in enumerate(model.layers):
        acc = a @ layer.weights.astype(np.int64) + layer.bias
        if index == len(model.layers) - 1:
            return np.clip(acc, -(2**31), 2**31 - 1)
        a = expected_dense(a, layer.weights, layer.bias, layer.shift, True, np.int8)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("weight_bits", [16, 8])
def test_quantized_inference_is_integer_only_and_matches_the_spec(
    digits_float: tuple[FloatMLP, Dataset], weight_bits: int
) -> None:
    float_model, data = digits_float
    model = quantize(float_model, data.x_train, weight_bits)
    x = data.x_test
    scores = model.scores(x)
    assert scores.dtype == np.int32
    np.testing.assert_array_equal(scores, _manual_scores(model, x))
    for layer in model.layers:
        assert layer.weights.dtype == (np.int16 if weight_bits == 16 else np.int8)
        assert np.abs(layer.weights).max() <= qmax(weight_bits)
        assert layer.bias.dtype == np.int32
        worst = np.abs(layer.weights.astype(np.int64)).sum(axis=0) * 128 + np.abs(layer.bias)
        assert worst.max() < 2**31, "an int32 accumulator must not overflow"


@pytest.mark.parametrize("weight_bits", [16, 8])
def test_quantization_loses_little_and_dequantization_inverts_it(
    digits_float: tuple[FloatMLP, Dataset], weight_bits: int
) -> None:
    float_model, data = digits_float
    x, y = data.x_test, data.y_test
    model = quantize(float_model, data.x_train, weight_bits)
    assert model.accuracy(x, y) >= float_model.accuracy(x, y) - 0.02
    back = dequantize(model)
    assert np.mean(back.predict(x) == model.predict(x)) > 0.97
    requantized = quantize(back, data.x_train, weight_bits)
    for before, after in zip(model.layers, requantized.layers, strict=True):
        assert before.weight_exp == after.weight_exp
        assert np.abs(before.weights.astype(np.int64) - after.weights).max() <= 1


def test_input_activations_centre_round_and_saturate() -> None:
    layer = FixedLayer(np.ones((4, 2), np.int16), np.zeros(2, np.int32), 7, 0, 7)
    model = FixedMLP([layer], np.array([0, 255, 100, 100], dtype=np.uint8))
    x = np.array([[255, 0, 100, 103]], dtype=np.uint8)
    assert model.input_activations(x).tolist() == [[127, -127, 0, 2]]


@pytest.mark.parametrize("weight_bits", [16, 8])
def test_fixed_model_round_trips_through_a_file(
    digits_float: tuple[FloatMLP, Dataset], weight_bits: int, tmp_path: Path
) -> None:
    float_model, data = digits_float
    model = quantize(float_model, data.x_train, weight_bits)
    path = tmp_path / "fixed.bfm"
    size = save_model(path, model_to_frame(model, {"dataset": "digits"}))
    loaded, meta = load_model(path)
    assert isinstance(loaded, FixedMLP)
    assert meta["model_type"] == "fixedmlp" and meta["weight_bits"] == weight_bits
    assert size < model.nbytes + 2048
    for before, after in zip(model.layers, loaded.layers, strict=True):
        np.testing.assert_array_equal(before.weights, after.weights)
        np.testing.assert_array_equal(before.bias, after.bias)
        assert after.weights.flags.writeable and after.weights.dtype == before.weights.dtype
    np.testing.assert_array_equal(loaded.scores(data.x_test), model.scores(data.x_test))


def _fixed_tensors(exponents: list[list[int]]) -> list[Tensor]:
    return [
        Tensor("input_offset", "uint8", (4,), np.zeros(4, np.uint8)),
        Tensor("exponents", "int32", (len(exponents), 3), np.array(exponents, np.int32)),
        Tensor("weight_0", "int16", (4, 3), np.zeros((4, 3), np.int16)),
        Tensor("bias_0", "int32", (3,), np.zeros(3, np.int32)),
        Tensor("weight_1", "int16", (3, 2), np.zeros((3, 2), np.int16)),
        Tensor("bias_1", "int32", (2,), np.zeros(2, np.int32)),
    ]


@pytest.mark.parametrize(
    "tensors, message",
    [
        (_fixed_tensors([[7, 10, 5], [5, 10, 15]]), None),
        (_fixed_tensors([[7, 10, 5], [6, 10, 16]]), "do not chain"),
        (_fixed_tensors([[7, 10, 5], [5, 10, 12]]), "accumulators"),
        (_fixed_tensors([[7, 99, 5], [5, 10, 15]]), "out of range"),
        (_fixed_tensors([[7, 10, 5]]), "weights and biases for 1 layers"),
        (_fixed_tensors([[7, 10, 5], [5, 10, 15]])[1:], "input_offset"),
    ],
)
def test_inconsistent_fixed_frames_are_refused(tensors: list[Tensor], message: str | None) -> None:
    frame = decode_frame(encode_frame(KIND_MODEL, {"model_type": "fixedmlp"}, tensors))
    if message is None:
        assert model_from_frame(frame).layer_sizes == [4, 3, 2]  # type: ignore[union-attr]
        return
    with pytest.raises(ModelFileError, match=message):
        model_from_frame(frame)


def test_float_fine_tuning_starts_from_init_and_freezes_leading_layers(
    digits_float: tuple[FloatMLP, Dataset],
) -> None:
    start, data = digits_float
    config = FloatConfig(epochs=1, train_layers=1)
    tuned = FloatTrainer([64, 32, 10], config, init=start).fit(data.x_train, data.y_train)
    np.testing.assert_array_equal(tuned.weights[0], start.weights[0])
    np.testing.assert_array_equal(tuned.biases[0], start.biases[0])
    assert not np.array_equal(tuned.weights[1], start.weights[1])
    assert tuned.accuracy(data.x_test, data.y_test) > 0.8
    with pytest.raises(ConfigError, match="initial model has layers"):
        FloatTrainer([64, 16, 10], init=start)
    with pytest.raises(ConfigError, match="train_layers must be 0"):
        FloatTrainer([64, 32, 10], FloatConfig(train_layers=3))


def test_float_training_returns_the_best_epoch_and_repeats_under_a_seed(
    digits_float: tuple[FloatMLP, Dataset],
) -> None:
    _, data = digits_float
    x, y = data.x_train[:1000], data.y_train[:1000]
    x_val, y_val = data.x_train[1000:], data.y_train[1000:]
    config = FloatConfig(epochs=5, seed=1, lr=0.5, batch_size=50)
    runs = []
    for _ in range(2):
        reports: list[EpochReport] = []
        model = FloatTrainer([64, 32, 10], config).fit(x, y, x_val, y_val, on_epoch=reports.append)
        accuracies = [(r.epoch, r.train_accuracy, r.val_accuracy) for r in reports]
        runs.append((model_to_frame(model), accuracies))
    assert runs[0] == runs[1]
    assert [epoch for epoch, _, _ in accuracies] == [1, 2, 3, 4, 5]
    best = max(val for _, _, val in accuracies if val is not None)
    assert model.accuracy(x_val, y_val) == best
