"""Claimed jobs whose worker is gone: given back to run again, or parked as poison.

A claim is a lease. When the worker holding it disappears (killed, hung: its
heartbeat stops or the lease runs out) the job's ``crashes`` count goes up and the
job runs again; once a step has taken its worker down ``crash_limit`` times it is
parked. A worker that stops on purpose releases its claims without a count.
Broker redeliveries and store outages never reach this count: they leave the
claim in place and the worker that holds it carries on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.store import documents as docs
from broker.store.jobs import JobState
from broker.store.schema import jobs, workers

log = structlog.get_logger("demat.recovery")


@dataclass(frozen=True)
class Lost:
    """A running job whose claim is to be taken back, and why."""

    job_id: str
    document_id: str
    token: str | None
    why: str


@dataclass(frozen=True)
class GivenBack:
    requeued: int = 0
    parked: int = 0


async def find_lost(conn: AsyncConnection, now: float, stale_before: float) -> list[Lost]:
    """Running jobs whose lease ran out or whose worker has not beaten since ``stale_before``."""
    live = sa.select(workers.c.id).where(workers.c.seen_at >= stale_before)
    rows = (await conn.execute(sa.select(
        jobs.c.id, jobs.c.document_id, jobs.c.claim_token, jobs.c.worker_id, jobs.c.lease_until,
    ).where(
        jobs.c.state == JobState.RUNNING,
        sa.or_(jobs.c.lease_until < now, jobs.c.worker_id.not_in(live)),
    ))).all()
    return [Lost(r.id, r.document_id, r.claim_token,
                 f"lease of worker {r.worker_id} expired mid-step"
                 if r.lease_until is not None and r.lease_until < now
                 else f"worker {r.worker_id} stopped mid-step") for r in rows]


async def held_by(conn: AsyncConnection, worker_id: str, why: str) -> list[Lost]:
    """The jobs ``worker_id`` still holds (it is stopping, or a previous run of it died)."""
    rows = (await conn.execute(sa.select(jobs.c.id, jobs.c.document_id, jobs.c.claim_token)
                               .where(jobs.c.state == JobState.RUNNING,
                                      jobs.c.worker_id == worker_id))).all()
    return [Lost(r.id, r.document_id, r.claim_token, why) for r in rows]


async def all_running(conn: AsyncConnection, why: str) -> list[Lost]:
    rows = (await conn.execute(sa.select(jobs.c.id, jobs.c.document_id, jobs.c.claim_token)
                               .where(jobs.c.state == JobState.RUNNING))).all()
    return [Lost(r.id, r.document_id, r.claim_token, why) for r in rows]


async def give_back(conn: AsyncConnection, lost: Sequence[Lost], now: float, *,
                    crashed: bool, crash_limit: int) -> GivenBack:
    """Take back each claim still as it was found; count a crash when ``crashed``."""
    requeued = parked = 0
    # Documents before jobs, in id order: the lock order of the workers' commits.
    for item in sorted(lost, key=lambda x: (x.document_id, x.job_id)):
        current = await docs.lock_document(conn, item.document_id)
        job = (await conn.execute(sa.select(jobs).where(
            jobs.c.id == item.job_id, jobs.c.state == JobState.RUNNING,
            jobs.c.claim_token.is_(None) if item.token is None
            else jobs.c.claim_token == item.token,
        ).with_for_update(skip_locked=True))).first()
        if job is None:
            continue  # its worker committed, or another took it over, meanwhile
        crashes = job.crashes + (1 if crashed else 0)
        transition = None
        if current is not None and current.state == eng.RUNNING:
            transition = eng.given_back(docs.doc_of(current), docs.job_of(job), item.why,
                                        crashes, crash_limit, now)
        if transition is not None and transition.park:
            await conn.execute(_PARK_JOB, {"_id": job.id, "now": now, "crashes": crashes,
                                           "error": transition.last_error})
            parked += 1
            log.error("job parked: its step crashed its worker", job=job.id,
                      document=job.document_id, crashes=crashes)
        else:
            await conn.execute(_REQUEUE_JOB, {"_id": job.id, "now": now, "crashes": crashes})
            requeued += 1
            log.warning("job given back", job=job.id, document=job.document_id,
                        reason=item.why, crashes=crashes)
        if transition is not None and current is not None:
            await docs.write_transition(conn, docs.doc_of(current), current.entity,
                                        transition, now)
    return GivenBack(requeued, parked)


_REQUEUE_JOB = jobs.update().where(jobs.c.id == sa.bindparam("_id")).values(
    state=JobState.SCHEDULED, due_at=sa.bindparam("now"), worker_id=None, claim_token=None,
    lease_until=None, crashes=sa.bindparam("crashes"))
_PARK_JOB = jobs.update().where(jobs.c.id == sa.bindparam("_id")).values(
    state=JobState.PARKED, finished_at=sa.bindparam("now"), worker_id=None, claim_token=None,
    lease_until=None, crashes=sa.bindparam("crashes"), last_error=sa.bindparam("error"))
