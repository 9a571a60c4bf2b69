"""The evaluation data sets the coordinator scores rounds on, from a small cache."""

from __future__ import annotations

from bitfleet.datasets import Dataset, load_dataset

# A few names are in use at a time; an admin naming many shifted variants must not grow
# memory without bound.
DATASET_CACHE = 4


class DatasetCache:
    def __init__(self, data_dir: str | None) -> None:
        self._data_dir = data_dir
        self._datasets: dict[str, Dataset] = {}

    def get(self, name: str) -> Dataset:
        """The data set, loaded once while it stays among the most recently used."""
        dataset = self._datasets.pop(name, None) or load_dataset(name, data_dir=self._data_dir)
        self._datasets[name] = dataset  # most recently used last
        while len(self._datasets) > DATASET_CACHE:
            del self._datasets[next(iter(self._datasets))]
        return dataset
