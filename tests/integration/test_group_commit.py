"""Claims and outcomes taken in batches keep the single-job rules, on SQLite and PostgreSQL:
a duplicate delivery is claimed once, a job of an ended document is cancelled, and each
outcome is fenced by its own claim."""

from __future__ import annotations

from broker import engine as eng
from broker.outcomes import Done
from broker.runtime import Runtime
from broker.store import documents as docs
from broker.store.schema import documents, jobs
from broker.worker import Finished, Worker
from tests.integration.store_helpers import new_documents, states


async def test_a_batch_claims_each_job_once_and_cancels_jobs_of_ended_documents(
        rt: Runtime) -> None:
    (doc_a, job_a), (doc_b, job_b), (_, job_c) = await new_documents(rt, 3)
    async with rt.db.begin() as conn:
        await conn.execute(documents.update().where(documents.c.id == doc_b).values(
            state=eng.CANCELLED))
    worker = Worker(rt, ["depot"])
    claims = await worker._claim_many([job_a, job_b, job_a, job_c])
    assert [c.job.id if c else None for c in claims] == [job_a, None, None, job_c]
    first = claims[0]
    assert first is not None and first.doc.id == doc_a
    assert await states(rt, documents, [doc_a]) == [eng.RUNNING]
    assert first.config == {"url": "http://x"} and [f.role for f in first.files] == ["document"]
    assert await states(rt, jobs, [job_a, job_b, job_c]) == ["running", "cancelled", "running"]
    # Delivered again while claimed: nobody gets it twice.
    assert await worker._claim_many([job_a, job_c]) == [None, None]


async def test_a_batch_whose_documents_all_ended_claims_nothing(rt: Runtime) -> None:
    pairs = await new_documents(rt, 2)
    async with rt.db.begin() as conn:
        await conn.execute(documents.update().values(state=eng.CANCELLED))
    claims = await Worker(rt, ["depot"])._claim_many([job for _, job in pairs])
    assert claims == [None, None]
    assert await states(rt, jobs, [job for _, job in pairs]) == ["cancelled", "cancelled"]


async def test_each_outcome_in_a_batch_is_fenced_by_its_own_claim(rt: Runtime) -> None:
    (doc_a, job_a), (doc_b, job_b) = await new_documents(rt, 2)
    stale, current = Worker(rt, ["depot"]), Worker(rt, ["depot"])
    (claim_a, claim_b) = await stale._claim_many([job_a, job_b])
    assert claim_a is not None and claim_b is not None
    # job_b's lease runs out and another worker takes it over.
    async with rt.db.begin() as conn:
        await conn.execute(jobs.update().where(jobs.c.id == job_b).values(lease_until=0))
    (taken,) = await current._claim_many([job_b])
    assert taken is not None and taken.token != claim_b.token
    await stale._commit_many([Finished(claim_a, Done(metadata={"n": 1}), [], []),
                              Finished(claim_b, Done(metadata={"n": 2}), [], [])])
    assert await states(rt, documents, [doc_a, doc_b]) == [eng.COMPLETED, eng.RUNNING]
    assert await states(rt, jobs, [job_a, job_b]) == ["done", "running"]
    await current._commit_many([Finished(taken, Done(metadata={"n": 3}), [], [])])
    async with rt.db.connect() as conn:
        row = await docs.get_document(conn, doc_b)
    assert row is not None and row.state == eng.COMPLETED and row.metadata["n"] == 3
