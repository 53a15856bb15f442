"""Workers: consume a job, claim it, run the connector step, commit, then ack.

A claim is a lease in the store. If the worker dies between the claim and the
commit, the relay's sweep gives the job back once the lease or the worker's
heartbeat expires, counting a crash. The commit is fenced by the claim token, so
a worker that lost its claim cannot overwrite the outcome of the one that took over.

Neither the broker nor the store ends a job half-way: a job runs in a task of the
worker's own, so a lost channel (which cancels the transport's handler) leaves the
step running to its commit, and the redelivery finds the job done. While the store
cannot be reached, claims and commits wait for it and are tried again with the
same claim token (see ``broker.store.outage``) instead of failing the delivery.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from broker import engine as eng
from broker.batch import Batcher
from broker.connector import FileView, StepContext
from broker.ids import new_id
from broker.metrics import JOB_RUNS, STEP_SECONDS
from broker.outcomes import Done, NewFile, Outcome, Rejected, StepError, TransientError
from broker.retry import AttemptRecord, InCallRetry
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store import jobs as stored_jobs
from broker.store import recovery
from broker.store import workers as stored_workers
from broker.store.documents import StoredFile
from broker.store.jobs import JobState
from broker.store.outage import is_outage
from broker.transport.base import Consumer, Delivery

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
    # Fences the commit: only the holder of the current claim may write the outcome.
    token: str


@dataclass(frozen=True)
class Finished:
    """A step's result, waiting for the next commit."""

    claim: Claim
    result: Outcome | StepError
    attempts: list[AttemptRecord]
    produced: list[StoredFile]


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
        # The jobs this worker runs, each in a task of its own (not the transport's).
        self._jobs: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self._workroot = Path(tempfile.mkdtemp(prefix="work-", dir=runtime.settings.tmp_dir))
        # Jobs delivered together are claimed, and their outcomes committed, together.
        self._claims: Batcher[str, Claim | None] = Batcher("claim", self._claim_many)
        self._commits: Batcher[Finished, None] = Batcher("outcome", self._commit_many)

    async def start(self) -> None:
        t = now()

        async def register() -> None:
            async with self.rt.db.begin() as conn:
                await stored_workers.register(conn, self.id, socket.gethostname(), os.getpid(),
                                              self.names, t)

        await self.rt.gate.run(register, "registering the worker")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=self.rt.settings.seconds("step_timeout"), sock_connect=10))
        self._heartbeat = asyncio.create_task(self._beat())
        prefetch = self.rt.settings.worker_prefetch
        for name in self.names:
            queue = self.rt.transport.work_queue(name)
            self._consumers.append(await self.rt.transport.consume(queue, self.handle, prefetch))
        log.info("worker started", worker=self.id, connectors=self.names)

    async def stop(self) -> None:
        """Take no more work, let running steps finish a while, release what is left."""
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        if self._jobs:
            _done, left = await asyncio.wait(set(self._jobs),
                                             timeout=self.rt.settings.seconds("stop_grace"))
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        with suppress(Exception):
            await self._release()
        if self._heartbeat:
            self._heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._http:
            await self._http.close()
        with suppress(Exception):
            async with self.rt.db.begin() as conn:
                await stored_workers.forget(conn, self.id)
        shutil.rmtree(self._workroot, ignore_errors=True)

    async def _release(self) -> None:
        """Give back the claims of steps cut short by the stop: no crash, they run again now."""
        async with self.rt.db.begin() as conn:
            held = await recovery.held_by(conn, self.id, f"worker {self.id} stopped on request")
            if held:
                await recovery.give_back(conn, held, now(), crashed=False,
                                         crash_limit=self.rt.settings.crash_limit)
        if held:
            log.info("claims released at stop", jobs=len(held))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                async with self.rt.db.begin() as conn:
                    await stored_workers.beat(conn, self.id, now())
            except Exception as exc:  # keep beating; the store may come back
                if is_outage(exc):
                    self.rt.gate.down(exc, "heartbeat")
                else:
                    log.warning("heartbeat failed", error=str(exc))

    async def handle(self, delivery: Delivery) -> None:
        job = asyncio.create_task(self._take(json.loads(delivery.body)["job"]))
        self._jobs.add(job)
        job.add_done_callback(self._finished)
        # The handler may be cancelled (a lost channel cancels its consumer's tasks);
        # the job is not: it runs to its commit, and the redelivery finds it done.
        await asyncio.shield(job)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        # Its handler may be gone: the error is logged here rather than lost.
        if not job.cancelled() and (error := job.exception()) is not None:
            log.error("job failed outside its step", error=f"{type(error).__name__}: {error}")

    async def _take(self, job_id: str) -> None:
        claim = await self._claims(job_id)
        if claim is None:
            return
        with structlog.contextvars.bound_contextvars(
            document=claim.doc.id, job=claim.job.id, entity=claim.doc.entity,
            flow=claim.doc.flow, step=claim.job.step, attempt=claim.job.run, worker=self.id,
        ):
            await self._run(claim)

    async def _claim_many(self, job_ids: list[str]) -> list[Claim | None]:
        """Take jobs (one transaction): their rows, documents, files and entity configs.

        A job already run or being run (a duplicate delivery) gets None: acked and dropped.
        While the store is unreachable this waits; the same token is used again, so a
        claim whose commit went through unanswered is taken up, not left to its lease.
        """
        token = new_id()
        return await self.rt.gate.run(lambda: self._claim_with(job_ids, token), "claiming jobs")

    async def _claim_with(self, job_ids: list[str], token: str) -> list[Claim | None]:
        async with self.rt.db.begin() as conn:
            taken = await stored_jobs.claim(conn, job_ids, self.id, token, now(),
                                            self.rt.settings.seconds("lease"))
        job_rows, doc_rows = dict(taken.jobs), taken.documents
        claims: list[Claim | None] = []
        for job_id in job_ids:
            job = job_rows.pop(job_id, None)  # a job listed twice is claimed once
            doc = doc_rows.get(job.document_id) if job is not None else None
            if job is None or doc is None:
                claims.append(None)
                continue
            # Settings are kept under the connector's settings key (one per peer account).
            key = self.rt.connectors[job.connector].settings_key
            config = taken.settings.get(doc.entity, {}).get(key, {})
            claims.append(Claim(job, doc, taken.files.get(doc.id, []), config, token))
        return claims

    def _context(self, claim: Claim, attempts: list[AttemptRecord],
                 workdir: Path) -> StepContext:
        job_row, doc_row, file_rows, config = claim.job, claim.doc, claim.files, claim.config
        views = [FileView(f.id, f.role, f.name, f.content_type, f.size, f.sha256,
                          self.rt.blobs.path(f.sha256)) for f in file_rows]
        assert self._http is not None

        # Both write at once, in a transaction of their own that a step timing out cannot
        # interrupt (shielded), and wait out a store outage: both are idempotent.
        async def save_ref(key: str, value: str) -> None:
            async def write() -> None:
                async with self.rt.db.begin() as conn:
                    await docs.set_ref(conn, doc_row.id, key, value)

            await asyncio.shield(self.rt.gate.run(write, "saving a reference"))

        async def save_file(new: NewFile) -> FileView:
            (stored,) = await self._stage_outputs((new,), job_row.step)

            async def write() -> str:
                async with self.rt.db.begin() as conn:
                    return await docs.add_file_once(conn, doc_row.id, stored, now())

            file_id = await asyncio.shield(self.rt.gate.run(write, "saving a file"))
            return FileView(file_id, stored.role, stored.name, stored.content_type, stored.size,
                            stored.sha256, self.rt.blobs.path(stored.sha256))

        return StepContext(
            document_id=doc_row.id, flow=doc_row.flow, entity=doc_row.entity,
            step=job_row.step, run=job_row.run, kind=job_row.kind,
            metadata=doc_row.metadata, files=views, config=config, refs=doc_row.refs,
            http=self._http, workdir=workdir,
            options=self.rt.flows[doc_row.flow].step(job_row.step).options,
            platform=self.rt.settings.platform_options(),
            retry=InCallRetry(self.rt.settings.retry_policy, attempts.append),
            save_ref=save_ref, save_file=save_file)

    async def _run(self, claim: Claim) -> None:
        job_row = claim.job
        connector = self.rt.connectors[job_row.connector]
        attempts: list[AttemptRecord] = []
        # The scratch dir is made only if the connector asks for it.
        ctx = self._context(claim, attempts, self._workroot / job_row.id)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.rt.settings.seconds("step_timeout")):
                result: Outcome | StepError = await connector.run(ctx)
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
            outputs = result.files if isinstance(result, Done | Rejected) else ()
            # Blobs go in before the rows that reference them: a crash in between
            # leaves an unreferenced blob, never a reference to a missing one.
            produced = await self._stage_outputs(outputs, job_row.step)
            await self._commits(Finished(claim, result, attempts, produced))
        finally:
            if ctx.scratch_made:
                _remove(ctx.workdir)
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

    async def _commit_many(self, done: list[Finished]) -> list[None]:
        """Write the outcomes of several jobs in one transaction, each fenced by its claim.

        While the store is unreachable this waits and tries again: the step's work is not
        thrown away. An outcome whose first try committed unanswered is fenced off (its
        job is done already) and dropped.
        """
        return await self.rt.gate.run(lambda: self._commit_with(done), "committing outcomes")

    async def _commit_with(self, done: list[Finished]) -> list[None]:
        t = now()
        async with self.rt.db.begin() as conn:
            rows = await stored_jobs.lock_documents(conn, (f.claim.doc.id for f in done))
            current = {doc_id: docs.doc_of(row) for doc_id, row in rows.items()}
            fenced = await stored_jobs.fence(
                conn, ((f.claim.job.id, f.claim.token) for f in done), t)
            writes: list[docs.TransitionWrite] = []
            job_updates: list[dict[str, Any]] = []
            for f in done:
                job_row = f.claim.job
                if job_row.id not in fenced:
                    log.warning("claim lost before commit; outcome dropped", job=job_row.id)
                    continue
                doc = current.get(job_row.document_id)
                if doc is None or doc.state in eng.TERMINAL:
                    job_updates.append({"_id": job_row.id, "state": JobState.CANCELLED,
                                        "last_error": "document ended meanwhile"})
                    continue
                transition = eng.apply(self.rt.flows[doc.flow], doc, docs.job_of(job_row),
                                       f.result, t, self.rt.policies, f.attempts, self._rng)
                if transition.park or transition.last_error:
                    job_updates.append({"_id": job_row.id, "state": JobState.PARKED
                                        if transition.park else JobState.DONE,
                                        "last_error": transition.last_error})
                writes.append(docs.TransitionWrite(doc, rows[doc.id].entity, transition,
                                                   f.produced))
                # A second outcome for the same document in this batch follows this one.
                current[doc.id] = replace(
                    doc, state=transition.state, step=transition.step, run=transition.run,
                    metadata={**doc.metadata, **transition.metadata})
            await stored_jobs.set_outcomes(conn, job_updates)
            await docs.write_transitions(conn, writes, t)
        if any(w.transition.next_job and w.transition.next_job.due_at <= now() for w in writes):
            self.rt.notifier.notify()
        return [None] * len(done)
