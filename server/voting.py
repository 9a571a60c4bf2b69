"""How much one agent's vote may weigh: the bound that keeps a lying agent to its share.

An upload claims how many samples it trained on, and weighted votes count that claim. A
claim is the agent's word, so it is bounded twice, once per round, from what the selected
agents *declared* in their capabilities (``samples``) before the round opened:

1. an agent's weight is at most what it declared (a claim above it is clipped), and
2. no agent's declared weight may exceed ``share`` of the round's declared total: the caps
   come from water-filling, the largest ``c`` with ``c <= share * sum(min(d_j, c))``, so a
   liar who declares 10**12 gets ``c``, not the model.

Rule 2 holds one liar to its share, not a coalition: agents that all declare 10**12
share the round between them. A job with ``max_vote_ratio`` r adds a third rule, applied
first:

3. no declaration counts above r times the round's median declaration (the lower median),
   so a minority short of half the round weighs at most r times what the median agent does.

An agent that declared nothing weighs as the median declaration of the round; when no
agent declared, every vote weighs 1. When ``share`` is below ``1 / n`` no cap can satisfy
rule 2, and every agent is capped at the smallest declaration (equal votes). The caps are
stored with the round, so a restarted coordinator weighs the same uploads the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import median_low
from typing import Any

from bitfleet.protocol import MAX_SAMPLES


def declared_samples(capabilities: Mapping[str, Any]) -> int | None:
    """The sample count an agent declared, if it is a plausible positive integer."""
    value = capabilities.get("samples")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SAMPLES:
        return value
    return None


def vote_caps(
    declared: Mapping[str, int | None], share: float, median_ratio: float | None = None
) -> dict[str, int]:
    """Per agent, the most its vote may weigh this round (see the module docstring)."""
    known = [value for value in declared.values() if value is not None]
    if not known:
        return dict.fromkeys(declared, 1)
    fallback = median_low(known)
    values = {agent: value if value is not None else fallback for agent, value in declared.items()}
    if median_ratio is not None:
        ceiling = max(1, int(median_ratio * median_low(values.values())))
        values = {agent: min(value, ceiling) for agent, value in values.items()}
    cap = _water_level(sorted(values.values()), share)
    return {agent: max(1, min(value, cap)) for agent, value in values.items()}


def _water_level(ascending: list[int], share: float) -> int:
    """The largest cap c with c <= share * sum(min(d, c)), or the smallest d if none."""
    total_below = sum(ascending)
    count = len(ascending)
    # k = how many of the largest declarations are capped; try the fewest first.
    for capped in range(count):
        uncapped = ascending[: count - capped]
        if capped:
            total_below -= ascending[count - capped]
        if share * capped >= 1:
            break
        level = share * total_below / (1 - share * capped)
        lowest_capped = ascending[count - capped] if capped else None
        if uncapped[-1] <= level and (lowest_capped is None or level <= lowest_capped):
            # The tolerance keeps float rounding from costing a whole sample (1/3 * 600).
            return int(level * (1 + 1e-12)) if capped else ascending[-1]
    return ascending[0]
