"""The job specification: what ``POST /api/v1/jobs`` accepts, validated with pydantic."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from bitfleet.algorithms import ALGORITHMS, algorithm_named
from bitfleet.errors import ConfigError

ALGORITHM_NAMES: list[JsonValue] = [*sorted(ALGORITHMS)]
EXAMPLE_JOB: dict[str, Any] = {
    "name": "fmnist-binary",
    "algorithm": "bitflip",
    "model": {"layers": [784, 512, 10], "weights": "binary"},
    "dataset": "fashion-mnist",
    "rounds": 10,
    "agents_per_round": 5,
    "min_agents": 3,
    "round_deadline_s": 120,
    "local_epochs": 1,
    "seed": 1,
}
MAX_ROUNDS = 10_000


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: list[int] = Field(
        min_length=2, max_length=16, description="layer sizes, input first, e.g. [784, 512, 10]"
    )
    weights: Literal["binary", "ternary", "int16", "int8"] = Field(
        "binary", description="weight encoding: binary/ternary for bitflip, int16/int8 for forward"
    )

    @model_validator(mode="after")
    def _sizes(self) -> ModelSpec:
        if any(size < 1 or size > 1 << 16 for size in self.layers):
            raise ValueError("every layer size must be between 1 and 65536")
        return self

    @property
    def weight_count(self) -> int:
        """Weights of the dense layers (what a coordinator's model-size limit counts)."""
        return sum(inputs * outputs for inputs, outputs in pairwise(self.layers))


class JobSpec(BaseModel):
    """A federated training job. Only the example's fields are needed; the rest default."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_JOB]})

    name: str = Field(min_length=1, max_length=200)
    algorithm: str = Field(
        "bitflip",
        description="the training algorithm: bitflip trains binary/ternary weights from "
        "scratch, forward adapts a pretrained int16/int8 model",
        json_schema_extra={"enum": ALGORITHM_NAMES},
    )
    model: ModelSpec
    dataset: str = Field(
        "fashion-mnist", description="held-out test split the coordinator evaluates on"
    )
    rounds: int = Field(10, ge=1, le=MAX_ROUNDS)
    agents_per_round: int = Field(5, ge=1, le=10_000)
    min_agents: int = Field(1, ge=1, description="fewest uploads that may close a round")
    quorum: int | None = Field(
        None, ge=1, description="uploads that close a round early (default: agents_per_round)"
    )
    round_deadline_s: float = Field(120.0, gt=0, le=7 * 86400)
    local_epochs: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    weighted_votes: bool = Field(True, description="weight each vote by the agent's samples")
    max_vote_share: float = Field(
        1 / 3,
        gt=0,
        le=1,
        description="the largest share of a round's declared samples one agent's vote may "
        "weigh (see docs/security.md: vote weights)",
    )
    max_vote_ratio: float | None = Field(
        2.0,
        ge=1,
        le=1_000_000,
        description="count no declaration above this multiple of the round's median "
        "declaration, so a coalition claiming huge sample counts weighs no more than that "
        "many median agents each; null turns the rule off (see docs/security.md: vote "
        "weights)",
    )
    screen_updates: bool = Field(
        False,
        description="refuse (reason 'outlier') a bit-flip update one of whose layers agrees "
        "with the round's model no better than chance: an inverted or random layer "
        "(docs/algorithms.md: robust aggregation)",
    )
    on_insufficient: Literal["retry", "fail"] = Field(
        "retry", description="a round short of min_agents at its deadline is retried or fails"
    )
    max_retries: int = Field(3, ge=0, le=100)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="trainer options, e.g. {'state_bits': 5, 'lr': 2.0}"
    )
    initial_model: str | None = Field(
        None, description="base64 of a .bfm model frame to start from (forward jobs)"
    )

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, name: str) -> str:
        try:
            return algorithm_named(name).name
        except ConfigError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _counts(self) -> JobSpec:
        if self.min_agents > self.agents_per_round:
            raise ValueError(
                f"min_agents ({self.min_agents}) cannot exceed agents_per_round "
                f"({self.agents_per_round})"
            )
        if self.quorum is not None and not self.min_agents <= self.quorum <= self.agents_per_round:
            raise ValueError("quorum must lie between min_agents and agents_per_round")
        trains = ALGORITHMS[self.algorithm].weights
        if self.model.weights not in trains:
            everyone = ", ".join(
                f"{a.name} trains {'/'.join(a.weights)}" for a in ALGORITHMS.values()
            )
            raise ValueError(
                f"algorithm {self.algorithm!r} does not train {self.model.weights!r} weights: "
                + everyone
            )
        return self

    @model_validator(mode="after")
    def _hyperparameters(self) -> JobSpec:
        """The agents' own check, run at submission: a job every agent would refuse (or
        crash on) is refused here instead."""
        algorithm = ALGORITHMS[self.algorithm]
        try:
            algorithm.config(self.hyperparameters, self.model.weights, self.local_epochs, self.seed)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self

    @property
    def close_at(self) -> int:
        return self.quorum or self.agents_per_round
