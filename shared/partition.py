"""Split a training set across federated agents, reproducibly under a seed.

* ``iid``: a seeded shuffle cut into near-equal parts; every agent sees every class.
* ``dirichlet``: each class is spread over the agents with proportions drawn from
  Dirichlet(alpha); a small alpha concentrates each class on few agents (label skew).
* ``shards``: samples sorted by label are cut into ``num_agents * shards_per_agent`` shards
  and each agent gets ``shards_per_agent`` random ones, so it sees only a few classes.

Every sample goes to exactly one agent and no agent is left empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError, DataError

SCHEMES = ("iid", "dirichlet", "shards")

Parts = list[NDArray[np.int64]]


def partition(
    labels: NDArray[Any],
    num_agents: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    shards_per_agent: int = 2,
    seed: int = 0,
) -> Parts:
    """Sample indices per agent: disjoint, covering every sample, each sorted and non-empty."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels have shape {labels.shape}; pass one label per sample (1-D)")
    _validate(len(labels), num_agents, scheme, alpha, shards_per_agent)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(len(labels), num_agents, rng)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_agents, alpha, rng)
    else:
        parts = _shards(labels, num_agents, shards_per_agent, rng)
    return [np.sort(part).astype(np.int64) for part in parts]


def label_histogram(labels: NDArray[Any], num_classes: int) -> NDArray[np.int64]:
    """Samples per class, zeros included, so histograms of different agents line up."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels range over {labels.min()}..{labels.max()} but there are {num_classes} "
            f"classes; labels must lie in 0..{num_classes - 1}"
        )
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def write_partitions(dataset: Dataset, parts: Parts, out_dir: Path) -> list[Path]:
    """Write DIR/agent-<i>.npz with the agent's training samples and the shared test split.

    Each file is an .npz that :func:`bitfleet.datasets.load_dataset` reads back as is.
    """
    paths = [out_dir / f"agent-{i}.npz" for i in range(len(parts))]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, indices in zip(paths, parts, strict=True):
            np.savez(
                path,
                X=dataset.x_train[indices].astype(np.uint8, copy=False),
                y=dataset.y_train[indices].astype(np.int64, copy=False),
                X_test=dataset.x_test.astype(np.uint8, copy=False),
                y_test=dataset.y_test.astype(np.int64, copy=False),
            )
    except OSError as error:
        raise ConfigError(
            f"cannot write partitions to {out_dir}: {error}; choose a writable output directory"
        ) from error
    return paths


def _validate(
    num_samples: int, num_agents: int, scheme: str, alpha: float, shards_per_agent: int
) -> None:
    """Reject options that cannot give every agent at least one sample."""
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}"
        )
    if not 1 <= num_agents <= num_samples:
        raise ConfigError(
            f"cannot split {num_samples} samples across {num_agents} agents; use between 1 "
            f"and {num_samples} agents"
        )
    if not alpha > 0:
        raise ConfigError(
            f"dirichlet alpha must be greater than 0, got {alpha}; "
            "use e.g. 0.1 for strong label skew or 100 for nearly iid"
        )
    if scheme == "shards" and not 1 <= shards_per_agent <= num_samples // num_agents:
        raise ConfigError(
            f"cannot cut {num_samples} samples into {shards_per_agent} shards for each of "
            f"{num_agents} agents; use between 1 and {num_samples // num_agents} shards per agent"
        )


def _iid(num_samples: int, num_agents: int, rng: np.random.Generator) -> Parts:
    return np.array_split(rng.permutation(num_samples), num_agents)


def _dirichlet(
    labels: NDArray[Any], num_agents: int, alpha: float, rng: np.random.Generator
) -> Parts:
    """Per class, cut its shuffled samples at Dirichlet(alpha)-distributed proportions."""
    pieces: list[list[NDArray[np.int64]]] = [[] for _ in range(num_agents)]
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        shares = rng.dirichlet(np.full(num_agents, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for agent, piece in enumerate(np.split(members, cuts)):
            pieces[agent].append(piece)
    return _fill_empty([np.concatenate(agent_pieces) for agent_pieces in pieces])


def _fill_empty(parts: Parts) -> Parts:
    """Give each empty agent one sample taken from the currently largest agent.

    Moving single samples changes the drawn skew as little as possible; it always succeeds
    because there are at least as many samples as agents.
    """
    for agent, part in enumerate(parts):
        if len(part) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[agent], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def _shards(
    labels: NDArray[Any], num_agents: int, shards_per_agent: int, rng: np.random.Generator
) -> Parts:
    """Deal label-sorted shards; shuffling first randomises which samples of a class pair up."""
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_agents * shards_per_agent)
    order = rng.permutation(len(shards)).reshape(num_agents, shards_per_agent)
    return [np.concatenate([shards[s] for s in row]) for row in order]
