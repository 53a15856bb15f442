"""The relay: moves due jobs from the store to the queues, and recovers lost work.

* due jobs (first runs, retries, polls) are published with confirms, then
  marked published, in batches; several relays may run (SKIP LOCKED);
* the sweep gives back jobs whose lease ran out or whose worker stopped
  beating, and republishes jobs published long ago but never claimed;
* the parking consumer turns messages dead-lettered by the delivery limit into
  failed, parked documents;
* state events from the outbox go to the events exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from contextlib import suppress
from typing import Any

import sqlalchemy as sa
import structlog

from broker import engine as eng
from broker import journal
from broker.metrics import JOBS_PUBLISHED, JOBS_RECOVERED
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store.db import padded
from broker.store.schema import documents, events, jobs, workers
from broker.transport.base import Consumer, Delivery, Message
from broker.worker import job_message_body

log = structlog.get_logger("demat.relay")

SWEEP_EVERY = 1.0
# On AMQP the queue is durable; this only catches a message lost anyway.
REPUBLISH_AFTER = 300.0


# The statements of every tick, built once (building and keying one costs as much as running it).
_DUE_JOBS = sa.select(jobs.c.id, jobs.c.connector).where(
    jobs.c.state == "scheduled", jobs.c.due_at <= sa.bindparam("now"),
).order_by(jobs.c.due_at).limit(sa.bindparam("limit")).with_for_update(skip_locked=True)
_PUBLISHED = jobs.update().where(jobs.c.id.in_(sa.bindparam("ids", expanding=True))).values(
    state="published", published_at=sa.bindparam("now"))
_PENDING_EVENTS = sa.select(events).order_by(events.c.id).limit(
    sa.bindparam("limit")).with_for_update(skip_locked=True)
_SENT_EVENTS = events.delete().where(events.c.id.in_(sa.bindparam("ids", expanding=True)))


class Relay:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._task: asyncio.Task[None] | None = None
        self._parking: Consumer | None = None
        self._last_sweep = 0.0

    async def start(self) -> None:
        if self.rt.embedded:
            await self._recover_embedded()
        self._parking = await self.rt.transport.consume(
            self.rt.transport.parking_queue, self._on_parked, prefetch=10)
        self._task = asyncio.create_task(self._loop())
        log.info("relay started", transport=self.rt.transport.name)

    async def stop(self) -> None:
        if self._parking:
            await self._parking.cancel()
        if self._task:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        interval = self.rt.settings.seconds("relay_interval")
        while True:
            try:
                busy = await self.tick()
            except Exception:
                log.exception("relay tick failed")
                busy = False
            if not busy:
                await self.rt.notifier.wait(interval)

    async def tick(self) -> bool:
        """One pass; True when a full batch was published (more may be due)."""
        published = await self.publish_due()
        if now() - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now()
            await self.sweep()
        await self.publish_events()
        await journal.seal(self.rt.db)
        return published >= self.rt.settings.relay_batch

    async def publish_due(self) -> int:
        t = now()
        async with self.rt.db.begin() as conn:
            rows = (await conn.execute(
                _DUE_JOBS, {"now": t, "limit": self.rt.settings.relay_batch})).all()
            if not rows:
                return 0
            by_connector: dict[str, list[str]] = defaultdict(list)
            for row in rows:
                by_connector[row.connector].append(row.id)
            for connector, ids in by_connector.items():
                queue = self.rt.transport.work_queue(connector)
                await self.rt.transport.publish_many(
                    queue, [Message(job_message_body(i), i) for i in ids])
                JOBS_PUBLISHED.labels(connector).inc(len(ids))
            await conn.execute(_PUBLISHED, {"ids": padded(r.id for r in rows), "now": t})
        return len(rows)

    async def sweep(self) -> int:
        """Give back jobs whose worker is gone; republish forgotten ones."""
        t = now()
        stale = t - self.rt.settings.seconds("worker_stale")
        recovered = 0
        async with self.rt.db.begin() as conn:
            live = sa.select(workers.c.id).where(workers.c.seen_at >= stale)
            lost = (await conn.execute(sa.select(jobs).where(
                jobs.c.state == "running",
                sa.or_(jobs.c.lease_until < t, jobs.c.worker_id.not_in(live)),
            ).with_for_update(skip_locked=True))).all()
            for job in lost:
                await self._give_back(conn, job, t)
                recovered += 1
            if not self.rt.embedded:
                await conn.execute(jobs.update().where(
                    jobs.c.state == "published", jobs.c.published_at < t - REPUBLISH_AFTER,
                ).values(state="scheduled", due_at=t))
            await conn.execute(workers.delete().where(workers.c.seen_at < t - 3600))
        if recovered:
            JOBS_RECOVERED.inc(recovered)
            self.rt.notifier.notify()
        return recovered

    async def _give_back(self, conn: Any, job: Any, t: float) -> None:
        why = ("lease expired" if job.lease_until is not None and job.lease_until < t
               else f"worker {job.worker_id} stopped")
        await conn.execute(jobs.update().where(jobs.c.id == job.id).values(
            state="scheduled", due_at=t, worker_id=None, claim_token=None, lease_until=None))
        await conn.execute(documents.update().where(
            documents.c.id == job.document_id, documents.c.state == eng.RUNNING,
        ).values(state=eng.QUEUED, next_due_at=t, updated_at=t))
        await journal.append(conn, [journal.Entry(
            "recovery", {"step": job.step, "run": job.run, "job": job.id,
                         "reason": f"{why}; step will run again"}, job.document_id)], t)
        log.warning("job given back", job=job.id, document=job.document_id, reason=why)

    async def _recover_embedded(self) -> None:
        """In-process queues died with the last process: re-dispatch what they held."""
        t = now()
        async with self.rt.db.begin() as conn:
            held = (await conn.execute(sa.select(jobs).where(
                jobs.c.state.in_(("published", "running"))))).all()
            for job in held:
                if job.state == "running":
                    await self._give_back(conn, job, t)
                else:
                    await conn.execute(jobs.update().where(jobs.c.id == job.id).values(
                        state="scheduled", due_at=t))
        if held:
            log.info("re-dispatching work left by the previous run", jobs=len(held))

    async def publish_events(self) -> int:
        async with self.rt.db.begin() as conn:
            rows = (await conn.execute(
                _PENDING_EVENTS, {"limit": self.rt.settings.relay_batch})).all()
            # Confirms awaited together: one round trip for the batch, not one per event.
            await asyncio.gather(*(self.rt.transport.publish_event(
                row.routing_key, json.dumps(row.payload).encode()) for row in rows))
            if rows:
                await conn.execute(_SENT_EVENTS, {"ids": padded(r.id for r in rows)})
        return len(rows)

    async def _on_parked(self, delivery: Delivery) -> None:
        """A job message exceeded the delivery limit: fail and park its document."""
        try:
            job_id = json.loads(delivery.body)["job"]
        except (ValueError, KeyError):
            log.error("unreadable message in parking", message=delivery.message_id)
            return
        t = now()
        async with self.rt.db.begin() as conn:
            job = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id)
                                      .with_for_update())).first()
            if job is None or job.state in ("done", "parked", "cancelled"):
                return
            current = await docs.lock_document(conn, job.document_id)
            await conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                state="parked", finished_at=t, last_error="delivery limit exceeded"))
            if current is None or current.state in eng.TERMINAL:
                return
            transition = eng.poisoned(docs.doc_of(current), docs.job_of(job),
                                      delivery.delivery_count or None)
            await docs.write_transition(conn, docs.doc_of(current), current.entity, transition, t)
        log.error("job parked by the delivery limit", job=job_id)
