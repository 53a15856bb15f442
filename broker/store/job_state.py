"""The states of a job (see ``broker.store.jobs`` for the path between them)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    PUBLISHED = "published"
    RUNNING = "running"
    DONE = "done"
    PARKED = "parked"
    CANCELLED = "cancelled"


ENDED = (JobState.DONE, JobState.PARKED, JobState.CANCELLED)
