"""The relay: moves due jobs from the store to the queues, and recovers lost work.

* due jobs (first runs, retries, polls) are published with confirms, then
  marked published, in batches; several relays may run (SKIP LOCKED);
* the sweep gives back jobs whose lease ran out or whose worker stopped
  beating (counting a crash; see ``broker.store.recovery``), and republishes
  jobs published long ago but never claimed;
* the parking consumer turns messages dead-lettered by the broker's delivery
  limit (a last-resort guard) into failed, parked documents;
* state events from the outbox go to the events exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from contextlib import suppress

import structlog

from broker import engine as eng
from broker.metrics import JOBS_PUBLISHED, JOBS_RECOVERED
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store import events as stored_events
from broker.store import jobs as stored_jobs
from broker.store import journal as stored_journal
from broker.store import recovery
from broker.store import workers as stored_workers
from broker.transport.base import Consumer, Delivery, Message
from broker.worker import job_message_body

log = structlog.get_logger("demat.relay")

SWEEP_EVERY = 1.0
# Published events beyond the recent history are forgotten this often.
PRUNE_EVERY = 60.0
# A tick that failed for another reason than a store outage is tried again after
# this, doubling up to the cap: an error must not turn into a hot loop.
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 5.0
# On AMQP the queue is durable; this only catches a message lost anyway.
REPUBLISH_AFTER = 300.0




class Relay:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._task: asyncio.Task[None] | None = None
        self._parking: Consumer | None = None
        self._last_sweep = 0.0
        self._last_prune = 0.0

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
        backoff = 0.0
        while True:
            try:
                # During a store outage the tick waits for the store, then runs again.
                busy = await self.rt.gate.run(self.tick, "relay tick")
                backoff = 0.0
            except Exception:
                backoff = min(max(backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
                log.exception("relay tick failed", retry_in=backoff)
                await asyncio.sleep(backoff)
                continue
            if not busy:
                await self.rt.notifier.wait(interval)

    async def tick(self) -> bool:
        """One pass; True when a full batch was published (more may be due)."""
        published = await self.publish_due()
        if now() - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now()
            await self.sweep()
        await self.publish_events()
        await stored_journal.seal(self.rt.db)
        return published >= self.rt.settings.relay_batch

    async def publish_due(self) -> int:
        t = now()
        async with self.rt.db.begin() as conn:
            rows = await stored_jobs.due(conn, t, self.rt.settings.relay_batch)
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
            await stored_jobs.mark_published(conn, (r.id for r in rows), t)
        return len(rows)

    async def sweep(self) -> int:
        """Give back jobs whose worker is gone; republish forgotten ones.

        Right after a store outage no heartbeat is trusted to be missing: the workers
        could not write theirs either. Dead workers are judged once the store has
        answered for ``worker_stale``, by which time every live one has beaten again.
        """
        t = now()
        stale = self.rt.settings.seconds("worker_stale")
        taken = recovery.GivenBack()
        async with self.rt.db.begin() as conn:
            if self.rt.gate.steady_for() >= stale:
                lost = await recovery.find_lost(conn, t, t - stale)
                if lost:
                    taken = await recovery.give_back(
                        conn, lost, t, crashed=True, crash_limit=self.rt.settings.crash_limit)
            if not self.rt.embedded:
                await stored_jobs.republish_forgotten(conn, t, REPUBLISH_AFTER)
            await stored_workers.forget_silent(conn, t)
            if t - self._last_prune >= PRUNE_EVERY:
                self._last_prune = t
                await stored_events.prune(conn, t)
        recovered = taken.requeued + taken.parked
        if recovered:
            JOBS_RECOVERED.inc(recovered)
            self.rt.notifier.notify()
        return recovered

    async def _recover_embedded(self) -> None:
        """In-process queues died with the last process: re-dispatch what they held.

        A job still claimed was being run when that process died: a crash.
        """
        t = now()
        async with self.rt.db.begin() as conn:
            running = await recovery.all_running(conn, "the previous process died mid-step")
            await recovery.give_back(conn, running, t, crashed=True,
                                     crash_limit=self.rt.settings.crash_limit)
            published = await stored_jobs.reschedule_published(conn, t)
        if running or published:
            log.info("re-dispatching work left by the previous run",
                     jobs=len(running) + published)

    async def publish_events(self) -> int:
        async with self.rt.db.begin() as conn:
            rows = await stored_events.pending(conn, self.rt.settings.relay_batch)
            # Confirms awaited together: one round trip for the batch, not one per event.
            await asyncio.gather(*(self.rt.transport.publish_event(
                row.routing_key, json.dumps({**row.payload, "event": row.id}).encode())
                for row in rows))
            await stored_events.mark_published(conn, [r.id for r in rows], now())
        return len(rows)

    async def _on_parked(self, delivery: Delivery) -> None:
        """A job message exceeded the broker's delivery limit: fail and park its document."""
        try:
            job_id = json.loads(delivery.body)["job"]
        except (ValueError, KeyError):
            log.error("unreadable message in parking", message=delivery.message_id)
            return

        async def park() -> None:
            t = now()
            async with self.rt.db.begin() as conn:
                job = await stored_jobs.get(conn, job_id)
                if job is None or job.state in stored_jobs.ENDED:
                    return
                current = await docs.lock_document(conn, job.document_id)
                await stored_jobs.park(conn, job_id, t, "delivery limit exceeded")
                if current is None or current.state in eng.TERMINAL:
                    return
                transition = eng.poisoned(docs.doc_of(current), docs.job_of(job),
                                          delivery.delivery_count or None)
                await docs.write_transition(conn, docs.doc_of(current), current.entity,
                                            transition, t)
            log.error("job parked by the delivery limit", job=job_id)

        await self.rt.gate.run(park, "parking a dead-lettered job")
