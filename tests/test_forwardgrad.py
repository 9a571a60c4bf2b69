"""The forward-gradient (QZO-FF) trainer: regenerated perturbations, learning, every option,
memory, numpy fallback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitfleet import kernels
from bitfleet.datasets import Dataset, load_dataset
from bitfleet.errors import ConfigError
from bitfleet.fixedpoint import FixedLayer, FixedMLP, quantize
from bitfleet.floatmlp import FloatConfig, FloatTrainer
from bitfleet.forwardgrad import ForwardConfig, ForwardTrainer, hinge_sum, measure_memory, step_keys
from bitfleet.kernels import reference
from bitfleet.modelfile import model_to_frame
from bitfleet.shifts import rotate_images
from bitfleet.training import EpochReport

TWINS = [reference] + ([kernels.fast] if kernels.fast is not None else [])


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def pretrained(digits: Dataset) -> FixedMLP:
    """64-32-10 trained on clean digits, quantized to int16."""
    trainer = FloatTrainer([64, 32, 10], FloatConfig(epochs=4, seed=0))
    return quantize(trainer.fit(digits.x_train, digits.y_train), digits.x_train)


@pytest.fixture(scope="module")
def rotated(digits: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return rotate_images(digits.x_train, 30), digits.y_train


def _train(
    model: FixedMLP, x: np.ndarray, y: np.ndarray, **options: object
) -> tuple[ForwardTrainer, FixedMLP]:
    trainer = ForwardTrainer(model.copy(), ForwardConfig(**options))  # type: ignore[arg-type]
    return trainer, trainer.fit(x, y)


def _regenerate(key: np.ndarray, size: int, offset: int = 0, density: int = 1 << 32) -> np.ndarray:
    """A perturbation drawn into zeros with the kernel: the z the trainer uses."""
    z = np.zeros(size, dtype=np.int32)
    kernels.add_perturbations(z, key, np.array([1]), offset, density, 1, 0, 0, False, -9, 9)
    return z


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("shift, stochastic", [(0, False), (16, True), (16, False), (3, True)])
def test_add_perturbations_twins_are_bit_exact(dtype: type, shift: int, stochastic: bool) -> None:
    rng = np.random.default_rng(shift + np.dtype(dtype).itemsize)
    start = rng.integers(-100, 101, size=(37, 65)).astype(dtype)  # not a multiple of 8 or 64
    keys = rng.integers(0, 2**63, size=5, dtype=np.uint64)
    coefs = np.array([1, -1, 0, 1, -1], dtype=np.int64)
    for density in (1 << 32, 1 << 30):
        results = []
        for twin in TWINS:
            w = start.copy()
            twin.add_perturbations(  # type: ignore[attr-defined]
                w, keys, coefs, 123, density, 77_000, shift, 99, stochastic, -110, 110
            )
            results.append(w)
        for other in results[1:]:
            np.testing.assert_array_equal(other, results[0])
        assert results[0].min() >= -110 and results[0].max() <= 110
        assert (results[0] != start).any()


def test_perturbations_regenerate_from_the_seed_and_undo_exactly() -> None:
    keys = step_keys(seed=5, step=42, count=3)
    np.testing.assert_array_equal(keys, step_keys(5, 42, 3))
    assert len({*keys.tolist(), *step_keys(5, 43, 3).tolist(), *step_keys(6, 42, 3).tolist()}) == 9
    z = _regenerate(keys[:1], 20_000)
    np.testing.assert_array_equal(z, _regenerate(keys[:1], 20_000))
    assert set(np.unique(z).tolist()) == {-1, 1} and abs(z.mean()) < 0.03
    # Counters are per entry: a tensor at offset 100 sees the same stream shifted by 100.
    np.testing.assert_array_equal(_regenerate(keys[:1], 50, offset=100), z[100:150])
    sparse = _regenerate(keys[:1], 20_000, density=1 << 30)
    assert abs(np.mean(sparse != 0) - 0.25) < 0.02
    w = np.random.default_rng(0).integers(-30_000, 30_001, size=20_000).astype(np.int16)
    before = w.astype(np.int32)
    for sign, expected in ((1, before + 1024 * z), (-2, before - 1024 * z), (1, before)):
        kernels.add_perturbations(
            w, keys[:1], np.array([sign]), 0, 1 << 32, 1024, 0, 0, False, -32768, 32767
        )
        np.testing.assert_array_equal(w, expected)


def test_the_trainer_stores_no_perturbation(pretrained: FixedMLP, rotated: tuple) -> None:
    """Every array the trainer holds is one of the model's own tensors."""
    x, y = rotated
    trainer = ForwardTrainer(pretrained.copy(), ForwardConfig(train_layers=0, perturbations=8))
    trainer.train_batch(x[:100], y[:100])
    own = [t for layer in trainer.model.layers for t in (layer.weights, layer.bias)]
    held = [v for v in vars(trainer).values() if isinstance(v, np.ndarray)]
    held += [t.values for t in trainer.trainables]
    assert all(any(h is o for o in own) for h in held)


def test_sign_m_spsa_reduces_the_integer_loss(pretrained: FixedMLP, rotated: tuple) -> None:
    x, y = rotated
    model = pretrained.copy()
    margin = round(2.0**model.score_exp)
    before = hinge_sum(model.scores(x), y, margin)
    trainer, adapted = _train(model, x, y, perturbations=8, lr=512, epochs=10)
    assert adapted is trainer.model
    assert hinge_sum(adapted.scores(x), y, margin) < 0.8 * before
    assert adapted.accuracy(x, y) > model.accuracy(x, y) + 0.1
    assert trainer.forward_passes == 2 * 8 * len(y) * 10


def test_same_seed_same_model_different_seed_different_model(
    pretrained: FixedMLP, rotated: tuple
) -> None:
    x, y = rotated
    frames = [model_to_frame(_train(pretrained, x, y, epochs=1, seed=s)[1]) for s in (3, 3, 4)]
    assert frames[0] == frames[1] != frames[2]


def _changed(before: FixedMLP, after: FixedMLP) -> list[tuple[float, float]]:
    """Fraction of weights and of biases changed, per layer."""
    return [
        (float(np.mean(a.weights != b.weights)), float(np.mean(a.bias != b.bias)))
        for a, b in zip(before.layers, after.layers, strict=True)
    ]


def test_options_have_their_effect(pretrained: FixedMLP, rotated: tuple) -> None:
    x, y = rotated[0][:100], rotated[1][:100]

    def one_step(**options: object) -> tuple[ForwardTrainer, list[tuple[float, float]]]:
        trainer = ForwardTrainer(pretrained.copy(), ForwardConfig(**options))  # type: ignore[arg-type]
        trainer.train_batch(x, y)
        return trainer, _changed(pretrained, trainer.model)

    # With m = 4, 3/8 of the entries draw a zero sum and are left alone.
    _, last = one_step()
    assert last[0] == (0.0, 0.0) and last[1][0] > 0.5 and last[1][1] > 0.3
    _, every = one_step(train_layers=0)
    assert every[0][0] > 0.5 and every[1][0] > 0.5
    _, no_bias = one_step(train_bias=False)
    assert no_bias[1][1] == 0.0 and no_bias[1][0] > 0.5
    _, sparse = one_step(density=0.1, perturbations=1)
    assert 0.05 < sparse[1][0] < 0.15
    # A step of 1/4 of an integer unit: nearest rounding loses it, stochastic keeps it.
    _, nearest = one_step(lr=0.25, perturbations=1, stochastic_rounding=False)
    _, stochastic = one_step(lr=0.25, perturbations=1)
    assert nearest[1][0] == 0.0 and 0.15 < stochastic[1][0] < 0.35
    one, _ = one_step(perturbations=1)
    four, _ = one_step(perturbations=4)
    assert four.forward_passes == 4 * one.forward_passes == 4 * 2 * len(y)


def test_schedules() -> None:
    assert [ForwardConfig(schedule="constant").lr_scale(s, 4) for s in range(4)] == [1.0] * 4
    assert [ForwardConfig(schedule="linear").lr_scale(s, 4) for s in range(4)] == [
        1,
        0.75,
        0.5,
        0.25,
    ]
    cosine = [ForwardConfig(schedule="cosine").lr_scale(s, 4) for s in range(5)]
    assert cosine[0] == 1.0 and cosine[2] == pytest.approx(0.5) and cosine[4] == 0.0


def test_schedule_changes_the_training(pretrained: FixedMLP, rotated: tuple) -> None:
    x, y = rotated[0][:300], rotated[1][:300]
    models = [_train(pretrained, x, y, epochs=2, schedule=s)[1] for s in ("constant", "linear")]
    assert model_to_frame(models[0]) != model_to_frame(models[1])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"perturbations": 0}, "perturbations must be at least 1"),
        ({"train_layers": 3}, "train_layers must be 0 \\(all\\) to 2"),
        ({"density": 0.0}, "density must be in"),
        ({"density": 1.5}, "density must be in"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"lr": 0}, "lr must be > 0"),
        ({"eps": 20000}, "eps 20000"),
        ({"eps": 0}, "eps 0"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_options_are_clear_errors(
    pretrained: FixedMLP, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ForwardTrainer(pretrained.copy(), ForwardConfig(**options))  # type: ignore[arg-type]


def test_int8_models_train_with_sub_unit_steps(digits: Dataset, rotated: tuple) -> None:
    trainer = FloatTrainer([64, 32, 10], FloatConfig(epochs=4, seed=0))
    model = quantize(trainer.fit(digits.x_train, digits.y_train), digits.x_train, 8)
    x, y = rotated
    with pytest.raises(ConfigError, match="steps of an int8 weight"):
        ForwardTrainer(model.copy(), ForwardConfig(eps=64))
    _, adapted = _train(model, x, y, perturbations=8, lr=512, epochs=5)
    assert adapted.weight_bits == 8 and adapted.accuracy(x, y) > model.accuracy(x, y) + 0.05


def test_wrong_data_shape_is_a_clear_error(pretrained: FixedMLP) -> None:
    trainer = ForwardTrainer(pretrained.copy())
    with pytest.raises(ConfigError, match="features"):
        trainer.fit(np.zeros((5, 63), np.uint8), np.zeros(5, np.int64))
    with pytest.raises(ConfigError, match="classes"):
        trainer.fit(np.zeros((5, 64), np.uint8), np.full(5, 10))


@pytest.mark.parametrize("train_layers", [1, 0])
def test_training_memory_stays_within_a_quarter_of_inference(train_layers: int) -> None:
    """784-128-10 on a batch of 100, measured by the code the CLI reports with."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 784), dtype=np.uint8)
    y = rng.integers(0, 10, size=300)
    float_model = FloatTrainer([784, 128, 10], FloatConfig(epochs=1)).fit(x, y)
    model = quantize(float_model, x)
    config = ForwardConfig(train_layers=train_layers, perturbations=16)
    report = measure_memory(model, config, x[:100], y[:100])
    assert report.inference_bytes > model.nbytes
    assert report.training_bytes <= 1.25 * report.inference_bytes
    assert report.ratio == report.training_bytes / report.inference_bytes


def test_forward_training_runs_without_numba_and_matches_it(
    pretrained: FixedMLP, rotated: tuple, tmp_path: Path
) -> None:
    """The numpy twins train bit for bit like the numba kernels."""
    x, y = rotated[0][:200], rotated[1][:200]
    code = (
        "import hashlib, sys, numpy as np\n"
        "from bitfleet import kernels\n"
        "from bitfleet.modelfile import model_from_frame, model_to_frame\n"
        "from bitfleet.frames import decode_frame\n"
        "from bitfleet.forwardgrad import ForwardConfig, ForwardTrainer\n"
        "assert not kernels.HAVE_NUMBA and kernels.fixed_dense is kernels.reference.fixed_dense\n"
        "data = np.load(sys.argv[1])\n"
        "model = model_from_frame(decode_frame(data['model'].tobytes()))\n"
        "config = ForwardConfig(train_layers=0, perturbations=3, density=0.5, epochs=2)\n"
        "trained = ForwardTrainer(model, config).fit(data['x'], data['y'])\n"
        "print(hashlib.sha256(model_to_frame(trained)).hexdigest())\n"
    )
    config = ForwardConfig(train_layers=0, perturbations=3, density=0.5, epochs=2)
    trained = ForwardTrainer(pretrained.copy(), config).fit(x, y)
    expected = hashlib.sha256(model_to_frame(trained)).hexdigest()
    path = tmp_path / "case.npz"
    np.savez(path, model=np.frombuffer(model_to_frame(pretrained), np.uint8), x=x, y=y)
    env = {**os.environ, "BITFLEET_NO_NUMBA": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_perturbing_a_strided_view_is_refused_not_lost() -> None:
    w = np.zeros((8, 6), dtype=np.int16)
    for twin in TWINS:
        with pytest.raises(ValueError, match="C-contiguous"):
            twin.add_perturbations(  # type: ignore[attr-defined]
                w.T, np.array([1], np.uint64), np.array([1]), 0, 1 << 32, 1, 0, 0, False, -9, 9
            )


def _integer_model(seed: int) -> FixedMLP:
    """A 64-32-10 int16 model drawn from integers alone (no float training), so the pins
    below hold on any machine."""
    rng = np.random.default_rng(seed)

    def layer(n_in: int, n_out: int, exps: tuple[int, int, int]) -> FixedLayer:
        weights = rng.integers(-20000, 20001, size=(n_in, n_out)).astype(np.int16)
        bias = rng.integers(-(10**6), 10**6 + 1, size=n_out).astype(np.int32)
        return FixedLayer(weights, bias, *exps)

    layers = [layer(64, 32, (7, 15, 5)), layer(32, 10, (5, 14, 19))]
    return FixedMLP(layers, np.full(64, 8, np.uint8))


# Fixed-seed adaptations on digits (1,000 to train, 438 to validate): the model frame's
# digest and each epoch's (train, validation) correct counts; the last epoch is returned.
PINNED = {
    ("cosine", 0): ("967186ba2cc58aee", [(156, 62), (167, 71), (153, 69), (135, 68)]),
    ("linear", 2): ("e7dfacdeac0a0a04", [(91, 37), (97, 36), (90, 35), (132, 35)]),
}


@pytest.mark.parametrize("schedule, seed", list(PINNED))
def test_fixed_seed_training_is_pinned_and_returns_the_last_epoch(
    digits: Dataset, schedule: str, seed: int
) -> None:
    x, y = digits.x_train[:1000], digits.y_train[:1000]
    x_val, y_val = digits.x_train[1000:], digits.y_train[1000:]
    reports: list[EpochReport] = []
    config = ForwardConfig(epochs=4, perturbations=8, seed=seed, schedule=schedule)
    model = ForwardTrainer(_integer_model(seed), config).fit(
        x, y, x_val, y_val, on_epoch=reports.append
    )
    digest, counts = PINNED[schedule, seed]
    assert hashlib.sha256(model_to_frame(model)).hexdigest()[:16] == digest
    seen = [(r.train_accuracy * len(x), (r.val_accuracy or 0.0) * len(x_val)) for r in reports]
    assert [(round(t), round(v)) for t, v in seen] == counts
    assert model.accuracy(x_val, y_val) == reports[-1].val_accuracy
