"""Domain shifts: deterministic, per image (so identical for train and test), named clearly."""

from __future__ import annotations

import numpy as np
import pytest

from bitfleet.datasets import load_dataset
from bitfleet.errors import DataError
from bitfleet.shifts import noise_images, parse_shift, rotate_images

SHIFTS = ["rotate30", "rotate15", "noise64", "invert"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("digits").x_train[:300]


@pytest.mark.parametrize("name", SHIFTS)
def test_a_shift_is_a_pure_function_of_each_image(images: np.ndarray, name: str) -> None:
    shifted = parse_shift(name)(images)
    assert shifted.dtype == np.uint8 and shifted.shape == images.shape
    assert not np.array_equal(shifted, images)
    np.testing.assert_array_equal(parse_shift(name)(images), shifted)
    order = np.random.default_rng(0).permutation(len(images))
    np.testing.assert_array_equal(parse_shift(name)(images[order]), shifted[order])
    np.testing.assert_array_equal(parse_shift(name)(images[7:8])[0], shifted[7])


@pytest.mark.parametrize("name", SHIFTS)
def test_shifted_data_sets_apply_the_same_shift_to_train_and_test(name: str) -> None:
    base = load_dataset("digits")
    shifted = load_dataset(f"digits:{name}")
    assert shifted.name == f"digits:{name}" and shifted.num_classes == base.num_classes
    np.testing.assert_array_equal(shifted.x_train, parse_shift(name)(base.x_train))
    np.testing.assert_array_equal(shifted.x_test, parse_shift(name)(base.x_test))
    np.testing.assert_array_equal(shifted.y_test, base.y_test)


def test_rotation_by_a_quarter_turn_is_exact() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(5, 36), dtype=np.uint8)
    turned = rotate_images(images, 90).reshape(5, 6, 6)
    np.testing.assert_array_equal(turned, np.rot90(images.reshape(5, 6, 6), k=1, axes=(1, 2)))


def test_rotation_keeps_the_centre_and_blacks_out_the_corners() -> None:
    image = np.full((1, 28 * 28), 200, dtype=np.uint8)
    rotated = rotate_images(image, 30).reshape(28, 28)
    assert rotated[14, 14] == 200 and rotated[0, 0] == 0


def test_invert_is_contrast_inversion(images: np.ndarray) -> None:
    np.testing.assert_array_equal(parse_shift("invert")(images).astype(int), 255 - images)


def test_noise_has_the_requested_spread_and_no_bias() -> None:
    grey = np.full((200, 100), 128, dtype=np.uint8)
    grey[:, 0] = np.arange(200)  # distinct images, distinct noise
    noise = noise_images(grey, 20)[:, 1:].astype(float) - 128
    assert abs(noise.mean()) < 0.5 and abs(noise.std() - 20) < 0.5
    rows = noise_images(grey, 20)
    assert len({row.tobytes() for row in rows}) == 200


@pytest.mark.parametrize(
    "spec, message",
    [
        ("digits:blur", "unknown shift 'blur'"),
        ("fashion-mnist:rotate", "unknown shift"),
        ("digits:rotate0", "out of range"),
        ("digits:rotate360", "out of range"),
        ("digits:noise0", "out of range"),
        ("digits:noise300", "out of range"),
    ],
)
def test_bad_shift_names_are_clear(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


def test_shifts_need_square_images() -> None:
    with pytest.raises(DataError, match="square"):
        parse_shift("rotate30")(np.zeros((2, 10), dtype=np.uint8))
