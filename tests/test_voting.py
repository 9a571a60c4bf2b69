"""Vote caps (bitfleet.server.voting): what one agent, and a coalition, may weigh."""

from __future__ import annotations

import pytest

from bitfleet.protocol import MAX_SAMPLES
from bitfleet.server.voting import vote_caps

HONEST = {f"h{index}": samples for index, samples in enumerate([100, 200, 300, 400, 500, 600, 700])}


def _share(caps: dict[str, int], agents: list[str]) -> float:
    return sum(caps[a] for a in agents) / sum(caps.values())


def test_one_liar_is_held_to_its_share_and_honest_agents_keep_their_declarations() -> None:
    caps = vote_caps({**HONEST, "liar": MAX_SAMPLES}, 1 / 3)
    assert {a: caps[a] for a in HONEST} == HONEST
    assert caps["liar"] == 1400  # a third of 2,800 + 1,400
    assert _share(caps, ["liar"]) == pytest.approx(1 / 3)


def test_a_coalition_of_liars_takes_the_round_under_the_share_rule_alone() -> None:
    liars = {f"liar{index}": MAX_SAMPLES for index in range(3)}
    caps = vote_caps({**HONEST, **liars}, 1 / 3)
    assert _share(caps, list(liars)) > 0.999


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_a_median_ratio_holds_a_minority_coalition_to_that_many_median_agents(
    ratio: float,
) -> None:
    liars = {f"liar{index}": MAX_SAMPLES for index in range(3)}
    caps = vote_caps({**HONEST, **liars}, 1 / 3, median_ratio=ratio)
    median = 500  # the lower median of the ten declarations
    assert all(caps[a] == int(ratio * median) for a in liars)
    assert all(caps[a] == min(d, int(ratio * median)) for a, d in HONEST.items())


def test_agents_that_declared_nothing_weigh_as_the_median_and_none_declared_weighs_one() -> None:
    caps = vote_caps({"a": 10, "b": 30, "c": None}, 1.0)
    assert caps == {"a": 10, "b": 30, "c": 10}
    assert vote_caps({"a": None, "b": None}, 1 / 3, median_ratio=1.0) == {"a": 1, "b": 1}


def test_a_share_no_cap_can_meet_gives_everyone_the_smallest_declaration() -> None:
    assert vote_caps({"a": 10, "b": 30}, 0.25) == {"a": 10, "b": 10}
