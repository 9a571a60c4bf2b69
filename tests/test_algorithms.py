"""The algorithm plug-ins: one registry per side with the same names, and the forward
algorithm's voted step (the coordinator's move of fixed-point weights)."""

from __future__ import annotations

import numpy as np
import pytest

from bitfleet.algorithms import ALGORITHMS, algorithm_named
from bitfleet.algorithms.forward import apply_voted_step
from bitfleet.errors import ConfigError
from bitfleet.server.algorithms import JOB_ALGORITHMS
from bitfleet.server.jobspec import JobSpec


def test_both_sides_register_the_same_algorithms_under_one_name_each() -> None:
    assert set(ALGORITHMS) == set(JOB_ALGORITHMS) == {"bitflip", "forward"}
    for name, job_algorithm in JOB_ALGORITHMS.items():
        assert job_algorithm.agent.name == name and ALGORITHMS[name].name == name
    trained = [weights for algorithm in ALGORITHMS.values() for weights in algorithm.weights]
    assert len(trained) == len(set(trained))  # a model's weights name its algorithm


def test_an_unknown_algorithm_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown algorithm 'sgd': use one of \['bitflip'"):
        algorithm_named("sgd")
    schema = JobSpec.model_json_schema()["properties"]["algorithm"]
    assert schema["enum"] == ["bitflip", "forward"]


def test_apply_voted_step_moves_and_saturates_in_the_weights_dtype() -> None:
    weights = np.array([[100, -100, 32767, -32768]], dtype=np.int16)
    moved = apply_voted_step(weights, np.array([[1, -1, 1, -1]], np.int8), 16, -32768, 32767)
    assert moved.dtype == np.int16
    np.testing.assert_array_equal(moved, [[116, -116, 32767, -32768]])
    small = np.array([[120, -120, 5]], dtype=np.int8)
    np.testing.assert_array_equal(
        apply_voted_step(small, np.array([[1, -1, 0]], np.int8), 10, -127, 127),
        [[127, -127, 5]],
    )


@pytest.mark.parametrize(
    ("weights", "vote", "step", "low", "high"),
    [
        (np.zeros(3, np.float32), np.zeros(3, np.int8), 1, -8, 7),
        (np.zeros(3, np.int64), np.zeros(3, np.int8), 1, -8, 7),
        (np.zeros(3, np.int16), np.zeros(4, np.int8), 1, -8, 7),
        (np.zeros(3, np.int16), np.array([0, 2, 0], np.int8), 1, -8, 7),
        (np.zeros(3, np.int16), np.zeros(3, np.int8), 0, -8, 7),
        (np.zeros(3, np.int16), np.zeros(3, np.int8), 1, 7, -8),
        (np.zeros(3, np.int8), np.zeros(3, np.int8), 1, -8, 300),
    ],
)
def test_apply_voted_step_refuses_bad_arguments(
    weights: np.ndarray, vote: np.ndarray, step: int, low: int, high: int
) -> None:
    with pytest.raises(ValueError):
        apply_voted_step(weights, vote, step, low, high)
