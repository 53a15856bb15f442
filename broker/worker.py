"""Workers: consume a job, claim it, run the connector step, commit, then ack.

A claim is a lease in the store. Whatever happens between the claim and the
commit (crash, lost connection, timeout), the job is run again later: by a
redelivery, or by the relay's sweep once the lease or the worker's heartbeat
expires. The commit is fenced by the claim token, so a worker that lost its
claim cannot overwrite the outcome of the one that took over.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
import structlog

from broker import engine as eng
from broker.ids import new_id
from broker.metrics import JOB_RUNS, STEP_SECONDS
from broker.outcomes import Done, NewFile, Outcome, Rejected, StepError, TransientError
from broker.retry import AttemptRecord, InCallRetry
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store.documents import StoredFile
from broker.store.schema import documents, entities, jobs, workers
from broker.transport.base import Consumer, Delivery
from connectors.base import FileView, StepContext

log = structlog.get_logger("demat.worker")

HEARTBEAT_SECONDS = 2.0


def _remove(workdir: Path) -> None:
    # Most steps leave their scratch dir empty: skip the tree walk then.
    try:
        workdir.rmdir()
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Claim:
    """What a claim read: the job, its document, the document's files, the entity's config."""

    job: Any
    doc: Any
    files: list[Any]
    config: dict[str, Any]


def job_message_body(job_id: str) -> bytes:
    return json.dumps({"job": job_id}).encode()


class Worker:
    def __init__(self, runtime: Runtime, connectors: list[str] | None = None) -> None:
        self.rt = runtime
        self.names = connectors or sorted(runtime.connectors)
        unknown = set(self.names) - set(runtime.connectors)
        if unknown:
            raise ValueError(f"unknown connector(s): {', '.join(sorted(unknown))}")
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self._consumers: list[Consumer] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self._workroot = Path(tempfile.mkdtemp(prefix="work-", dir=runtime.settings.tmp_dir))

    async def start(self) -> None:
        t = now()
        async with self.rt.db.begin() as conn:
            await conn.execute(workers.insert().values(
                id=self.id, host=socket.gethostname(), pid=os.getpid(), connectors=self.names,
                started_at=t, seen_at=t))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=self.rt.settings.seconds("step_timeout"), sock_connect=10))
        self._heartbeat = asyncio.create_task(self._beat())
        prefetch = self.rt.settings.worker_prefetch
        for name in self.names:
            queue = self.rt.transport.work_queue(name)
            self._consumers.append(await self.rt.transport.consume(queue, self.handle, prefetch))
        log.info("worker started", worker=self.id, connectors=self.names)

    async def stop(self) -> None:
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        if self._heartbeat:
            self._heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._http:
            await self._http.close()
        with suppress(Exception):
            async with self.rt.db.begin() as conn:
                await conn.execute(workers.delete().where(workers.c.id == self.id))
        shutil.rmtree(self._workroot, ignore_errors=True)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                async with self.rt.db.begin() as conn:
                    await conn.execute(workers.update().where(workers.c.id == self.id)
                                       .values(seen_at=now()))
            except Exception as exc:  # keep beating; the store may come back
                log.warning("heartbeat failed", error=str(exc))

    async def handle(self, delivery: Delivery) -> None:
        job_id = json.loads(delivery.body)["job"]
        token = new_id()
        claim = await self._claim(job_id, token)
        if claim is None:
            return
        with structlog.contextvars.bound_contextvars(
            document=claim.doc.id, job=job_id, entity=claim.doc.entity, flow=claim.doc.flow,
            step=claim.job.step, attempt=claim.job.run, worker=self.id,
        ):
            await self._run(claim, token)

    async def _claim(self, job_id: str, token: str) -> Claim | None:
        """Take the job (one transaction): its row, its document, files and entity config."""
        t = now()
        lease = self.rt.settings.seconds("lease")
        async with self.rt.db.begin() as conn:
            job_row = (await conn.execute(jobs.update().where(
                jobs.c.id == job_id,
                sa.or_(jobs.c.state.in_(("published", "scheduled")),
                       sa.and_(jobs.c.state == "running", jobs.c.lease_until < t)),
            ).values(state="running", worker_id=self.id, claim_token=token, lease_until=t + lease)
                .returning(*jobs.c))).first()
            if job_row is None:
                # Already run or being run: a duplicate delivery, acked and dropped.
                return None
            doc_row = await docs.lock_document(conn, job_row.document_id)
            if doc_row is None or doc_row.state in eng.TERMINAL:
                await conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                    state="cancelled", finished_at=t, last_error="document no longer active"))
                return None
            await conn.execute(documents.update().where(
                documents.c.id == doc_row.id).values(
                state=eng.RUNNING, step=job_row.step, run=job_row.run, next_due_at=None,
                updated_at=t))
            file_rows = await docs.get_files(conn, doc_row.id)
            entity = (await conn.execute(
                sa.select(entities.c.connectors).where(entities.c.siren == doc_row.entity)
            )).first()
        config = (entity.connectors if entity else {}).get(job_row.connector, {})
        return Claim(job_row, doc_row, file_rows, config)

    def _context(self, claim: Claim, attempts: list[AttemptRecord],
                 workdir: Path) -> StepContext:
        job_row, doc_row, file_rows, config = claim.job, claim.doc, claim.files, claim.config
        views = [FileView(f.id, f.role, f.name, f.content_type, f.size, f.sha256,
                          self.rt.blobs.path(f.sha256)) for f in file_rows]
        assert self._http is not None

        async def save_ref(key: str, value: str) -> None:
            async with self.rt.db.begin() as conn:
                await docs.set_ref(conn, doc_row.id, key, value)

        async def save_file(new: NewFile) -> FileView:
            (stored,) = await self._stage_outputs((new,), job_row.step)
            async with self.rt.db.begin() as conn:
                file_id = await docs.add_file_once(conn, doc_row.id, stored, now())
            return FileView(file_id, stored.role, stored.name, stored.content_type, stored.size,
                            stored.sha256, self.rt.blobs.path(stored.sha256))

        return StepContext(
            document_id=doc_row.id, flow=doc_row.flow, entity=doc_row.entity,
            step=job_row.step, run=job_row.run, kind=job_row.kind,
            metadata=doc_row.metadata, files=views, config=config, refs=doc_row.refs,
            http=self._http, workdir=workdir,
            retry=InCallRetry(self.rt.settings.retry_policy, attempts.append),
            save_ref=save_ref, save_file=save_file)

    async def _run(self, claim: Claim, token: str) -> None:
        job_row, doc_row = claim.job, claim.doc
        connector = self.rt.connectors[job_row.connector]
        attempts: list[AttemptRecord] = []
        workdir = self._workroot / job_row.id
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            ctx = self._context(claim, attempts, workdir)
            result: Outcome | StepError = await asyncio.wait_for(
                connector.run(ctx), self.rt.settings.seconds("step_timeout"))
        except StepError as exc:
            result = exc
        except TimeoutError:
            result = TransientError(
                f"step {job_row.step} timed out after {self.rt.settings.step_timeout}")
        except Exception as exc:
            log.exception("connector raised an unexpected error")
            result = TransientError(f"unexpected {type(exc).__name__} in {job_row.connector}: "
                                    f"{exc}")
        elapsed = time.perf_counter() - started
        outcome_name = type(result).__name__
        JOB_RUNS.labels(job_row.connector, outcome_name).inc()
        STEP_SECONDS.labels(job_row.connector).observe(elapsed)
        try:
            await self._commit(job_row, doc_row, token, result, attempts)
        finally:
            _remove(workdir)
        log.info("step ran", outcome=outcome_name, seconds=round(elapsed, 3),
                 error=str(result) if isinstance(result, StepError) else None)

    async def _stage_outputs(self, produced: tuple[NewFile, ...],
                             step: str) -> list[StoredFile]:
        stored = []
        for new in produced:
            staged = await self.rt.blobs.stage_file(new.path)
            await self.rt.blobs.commit(staged)
            stored.append(StoredFile(new.role, new.name, new.content_type, staged.size,
                                     staged.sha256, step))
        return stored

    async def _commit(self, job_row: Any, doc_row: Any, token: str,
                      result: Outcome | StepError, attempts: list[AttemptRecord]) -> None:
        # Blobs go in before the rows that reference them: a crash in between
        # leaves an unreferenced blob, never a reference to a missing one.
        outputs = result.files if isinstance(result, Done | Rejected) else ()
        produced = await self._stage_outputs(outputs, job_row.step)
        t = now()
        async with self.rt.db.begin() as conn:
            # Document first: the same lock order as the API's cancel and retry.
            current = await docs.lock_document(conn, doc_row.id)
            fenced = await conn.execute(jobs.update().where(
                jobs.c.id == job_row.id, jobs.c.claim_token == token,
                jobs.c.state == "running").values(state="done", finished_at=t))
            if fenced.rowcount != 1:
                log.warning("claim lost before commit; outcome dropped")
                return
            if current is None or current.state in eng.TERMINAL:
                await conn.execute(jobs.update().where(jobs.c.id == job_row.id).values(
                    state="cancelled", last_error="document ended meanwhile"))
                return
            doc = docs.doc_of(current)
            transition = eng.apply(self.rt.flows[doc.flow], doc, docs.job_of(job_row), result,
                                   t, self.rt.policies, attempts, self._rng)
            if transition.park or transition.last_error:
                await conn.execute(jobs.update().where(jobs.c.id == job_row.id).values(
                    state="parked" if transition.park else "done",
                    last_error=transition.last_error))
            await docs.write_transition(conn, doc, current.entity, transition, t, produced)
        if transition.next_job and transition.next_job.due_at <= now():
            self.rt.notifier.notify()
