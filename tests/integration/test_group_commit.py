"""Claims and outcomes taken in batches keep the single-job rules, on SQLite and PostgreSQL:
a duplicate delivery is claimed once, a job of an ended document is cancelled, and each
outcome is fenced by its own claim."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker import engine as eng
from broker import registry
from broker.outcomes import Done
from broker.runtime import Runtime, now
from broker.settings import Settings
from broker.store import documents as docs
from broker.store.schema import documents, jobs
from broker.worker import Finished, Worker
from connectors.registry import all_connectors

ENTITY = "214000150"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
async def rt(database_url: str | None, tmp_path: Path) -> AsyncIterator[Runtime]:
    runtime = await Runtime.open(
        Settings(data_dir=tmp_path / "data", database_url=database_url), all_connectors())
    async with runtime.db.begin() as conn:
        await registry.upsert_entity(conn, ENTITY, "Commune", {"depot": {"url": "http://x"}})
    try:
        yield runtime
    finally:
        await runtime.close()


async def new_documents(rt: Runtime, count: int) -> list[tuple[str, str]]:
    """``count`` depot documents with their first job scheduled: (document id, job id)."""
    flow, t, new = rt.flows["depot"], now(), []
    for _ in range(count):
        doc = eng.Doc(docs.new_id(), "depot", eng.QUEUED, None, 0, {})
        new.append(docs.NewDocument(docs.TransitionWrite(doc, ENTITY, eng.start(
            flow, doc, t, "test")), [docs.StoredFile("document", "a.xml", "text/xml", 3,
                                                     "0" * 64)]))
    async with rt.db.begin() as conn:
        await docs.insert_documents(conn, new, t)
        rows = (await conn.execute(sa.select(jobs.c.document_id, jobs.c.id))).all()
    by_doc = {r.document_id: r.id for r in rows}
    return [(n.start.doc.id, by_doc[n.start.doc.id]) for n in new]


async def states(rt: Runtime, table: sa.Table, ids: list[str]) -> list[str]:
    async with rt.db.connect() as conn:
        found = dict((await conn.execute(sa.select(table.c.id, table.c.state).where(
            table.c.id.in_(ids)))).all())
    return [found[i] for i in ids]


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
    assert first is not None and first.doc.id == doc_a and first.doc.state == eng.RUNNING
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
