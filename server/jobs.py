"""Jobs: creation, typed reads (the spec parsed once per job), and every status change.

A job's spec never changes after it is stored, so each is validated once into a
:class:`JobSpec` and kept beside its id. Every status the coordinator writes goes through
:func:`bitfleet.jobstatus.transition`, here or in the store calls the scheduler makes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.frames import decode_frame
from bitfleet.jobstatus import ACTIVE, FAILED, transition
from bitfleet.server.algorithms import JOB_ALGORITHMS, JobAlgorithm
from bitfleet.server.datasets import DatasetCache
from bitfleet.server.errors import NotFound
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import DeclineRecord, JobRecord, RoundMetrics

log = logging.getLogger("bitfleet.jobs")


@dataclass(frozen=True)
class Job:
    """A stored job with its spec, typed."""

    record: JobRecord
    spec: JobSpec

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def round(self) -> int:
        return self.record.round

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def algorithm(self) -> JobAlgorithm:
        return JOB_ALGORITHMS[self.spec.algorithm]


class StoredSpecInvalid(ConfigError):
    """A job stored by an older, laxer coordinator has a spec this one refuses."""


# Published models kept: a few rounds of a few jobs (each at most a model's size).
PUBLISHED_KEPT = 16


class JobBook:
    def __init__(self, store: StateStore, datasets: DatasetCache, max_model_weights: int) -> None:
        self._store = store
        self._datasets = datasets
        self._max_model_weights = max_model_weights
        self._specs: dict[str, JobSpec] = {}
        self._published: dict[tuple[str, int | None], bytes] = {}
        self._specs_lock = threading.Lock()  # guards both caches

    def create(self, spec: JobSpec) -> JobRecord:
        """Check the spec against this coordinator and its data, build round 0's model, and
        store the job ``pending``."""
        model = round_zero_model(spec, self._max_model_weights, self._datasets.get)
        job_id = "job-" + secrets.token_hex(6)
        job = self._store.create_job(job_id, spec.model_dump(), model)
        with self._specs_lock:
            self._specs[job_id] = spec
        log.info("job %s created: %s, %d rounds", job_id, spec.name, spec.rounds)
        return job

    def record(self, job_id: str) -> JobRecord:
        """The job as stored, whatever its spec; :class:`NotFound` if there is none."""
        record = self._store.get_job(job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return record

    def get(self, job_id: str) -> Job:
        """The job, typed; :class:`NotFound` if there is none, :class:`StoredSpecInvalid` if
        its stored spec does not validate here."""
        record = self.record(job_id)
        return Job(record, self._spec(record))

    def active(self) -> list[Job]:
        """Pending and running jobs. One whose stored spec this coordinator refuses fails,
        with the reason, instead of stopping the rest."""
        jobs = []
        for record in self._store.list_jobs(ACTIVE):
            try:
                jobs.append(Job(record, self._spec(record)))
            except StoredSpecInvalid as error:
                self.set_status(record, FAILED, str(error))
                log.error("job %s failed: %s", record.job_id, error)
        return jobs

    def records(self) -> list[JobRecord]:
        """Every job, in creation order."""
        return self._store.list_jobs()

    def set_status(self, job: JobRecord, status: str, reason: str) -> None:
        """Move the job to ``status`` (:class:`bitfleet.jobstatus.JobConflict` if it may
        not go there)."""
        self._store.set_job_status(job.job_id, transition(job.status, status), reason)

    def stored_model(self, job_id: str, round_index: int | None = None) -> bytes:
        """The global model that opens ``round_index`` (default: the latest) as stored, with
        any state only the coordinator reads."""
        model = self._store.get_model(job_id, round_index)
        if model is None:
            self.record(job_id)
            raise NotFound(f"job {job_id!r} has no model for round {round_index}")
        return model

    def model(self, job_id: str, round_index: int | None = None) -> bytes:
        """The global model that opens ``round_index`` (default: the latest) as agents and
        users are given it. A round's model never changes, so the last few are kept."""
        key = (job_id, round_index)
        with self._specs_lock:
            cached = self._published.get(key) if round_index is not None else None
        if cached is not None:
            return cached
        published = self.get(job_id).algorithm.published(self.stored_model(job_id, round_index))
        if round_index is not None:
            with self._specs_lock:
                self._published[key] = published
                while len(self._published) > PUBLISHED_KEPT:
                    del self._published[next(iter(self._published))]
        return published

    def metrics(self, job_id: str) -> list[RoundMetrics]:
        return self._store.list_metrics(job_id)

    def declines(self, job_id: str) -> list[DeclineRecord]:
        return self._store.list_declines(job_id)

    def _spec(self, record: JobRecord) -> JobSpec:
        with self._specs_lock:
            spec = self._specs.get(record.job_id)
        if spec is None:
            try:
                spec = JobSpec.model_validate(record.spec)
            except ValidationError as error:
                raise StoredSpecInvalid(
                    f"its stored spec is not valid here: {error.errors()[0]['msg']}"
                ) from None
            with self._specs_lock:
                self._specs[record.job_id] = spec
        return spec


def round_zero_model(
    spec: JobSpec, max_model_weights: int, dataset_of: Callable[[str], Dataset]
) -> bytes:
    """Round 0's global model of a job, after checking the job against the coordinator's
    weight limit and the data set it is evaluated on (ConfigError says what to change)."""
    # Checked before anything is built: the initial model alone would allocate this much.
    if spec.model.weight_count > max_model_weights:
        raise ConfigError(
            f"model layers {spec.model.layers} have {spec.model.weight_count} weights, more "
            f"than this coordinator's limit of {max_model_weights}: use smaller "
            "layers, or restart the coordinator with a larger --max-model-weights"
        )
    algorithm = JOB_ALGORITHMS.get(spec.algorithm)
    if algorithm is None:
        raise ConfigError(f"algorithm {spec.algorithm!r} is not available on this coordinator")
    algorithm.check_screening(spec)
    dataset = dataset_of(spec.dataset)
    layers = spec.model.layers
    if layers[0] != dataset.num_features or layers[-1] < dataset.num_classes:
        raise ConfigError(
            f"model layers {layers} do not fit {spec.dataset}: it has "
            f"{dataset.num_features} features and {dataset.num_classes} classes, so use "
            f"[{dataset.num_features}, ..., {dataset.num_classes}]"
        )
    return _initial_model(spec, algorithm)


def _initial_model(spec: JobSpec, algorithm: JobAlgorithm) -> bytes:
    if spec.initial_model is None:
        return algorithm.initial_model(spec)
    try:
        frame_bytes = base64.b64decode(spec.initial_model, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("initial_model must be base64 of a .bfm model file") from None
    return algorithm.start_from(decode_frame(frame_bytes), frame_bytes, spec)
