"""`depot` end to end: `demat serve` and the gf simulator as real processes."""

from __future__ import annotations

import sqlite3

from tests.e2e.conftest import ENTITY, OTHER_ENTITY, Stack
from tests.e2e.harness import run_cli, set_faults, sim_stats


async def submit_one(stack: Stack, name: str = "mandat.xml", body: bytes = b"<m/>") -> str:
    status, doc = await stack.api.submit(ENTITY, [("document", name, body)], {"exercice": 2026})
    assert status == 201, doc
    assert doc["state"] == "queued" and doc["flow"] == "depot"
    return str(doc["id"])


async def test_a_document_is_delivered_once_with_its_files_and_metadata(stack: Stack) -> None:
    doc_id = await submit_one(stack, "bordereau.xml", b"<bordereau n='1'/>")
    done = await stack.api.wait_terminal([doc_id], 20)
    assert done[doc_id]["state"] == "completed"
    assert done[doc_id]["metadata"]["depot"]["status"] == 201
    stats = await sim_stats(stack.gf_url)
    assert stats["received"] == 1 and stats["duplicates"] == 0


async def test_three_503_are_journaled_as_attempts_then_the_document_completes(
        stack: Stack) -> None:
    await set_faults(stack.gf_url, [{"kind": "503", "count": 3, "retry_after": 0}])
    doc_id = await submit_one(stack)
    done = await stack.api.wait_terminal([doc_id], 30)
    assert done[doc_id]["state"] == "completed"
    journal = await stack.api.get(f"/api/v1/documents/{doc_id}/journal")
    failed = [e for e in journal if e["kind"] == "attempt" and "error" in e]
    assert len(failed) == 3, journal
    assert all("503" in e["error"] for e in failed)
    assert all(("next_try_at" in e) or ("next_due_at" in e) for e in failed)
    assert [e for e in journal if e["kind"] == "attempt" and e.get("ok")]
    assert (await sim_stats(stack.gf_url))["received"] == 1


async def test_an_endpoint_that_keeps_failing_parks_then_replay_completes(stack: Stack) -> None:
    await set_faults(stack.gf_url, [{"kind": "500"}])
    doc_id = await submit_one(stack)
    done = await stack.api.wait_terminal([doc_id], 30)
    assert done[doc_id]["state"] == "failed"
    assert "500" in done[doc_id]["last_error"] and "gave up after 4 runs" in \
        done[doc_id]["last_error"]
    parked = await stack.api.get("/api/v1/parking")
    assert [p["id"] for p in parked["items"]] == [doc_id]
    assert parked["items"][0]["connector"] == "depot"
    await set_faults(stack.gf_url, [])
    env = {**stack.env, "DEMAT_API_URL": stack.url, "DEMAT_TOKEN": stack.token}
    out = run_cli(env, "parking", "replay", doc_id)
    assert '"count": 1' in out
    done = await stack.api.wait_terminal([doc_id], 20)
    assert done[doc_id]["state"] == "completed"
    assert (await stack.api.get("/api/v1/parking"))["items"] == []
    journal = await stack.api.get(f"/api/v1/documents/{doc_id}/journal")
    assert any(e["kind"] == "operator" and e["action"] == "replay" for e in journal)


async def test_a_4xx_fails_at_once_without_retry(stack: Stack) -> None:
    # OTHER_ENTITY's endpoint is a path the finance software does not serve: 404.
    status, doc = await stack.api.submit(OTHER_ENTITY, [("document", "a.xml", b"<a/>")])
    assert status == 201, doc
    doc_id = doc["id"]
    done = await stack.api.wait_terminal([doc_id], 20)
    assert done[doc_id]["state"] == "failed" and "HTTP 404" in done[doc_id]["last_error"]
    journal = await stack.api.get(f"/api/v1/documents/{doc_id}/journal")
    assert len([e for e in journal if e["kind"] in ("attempt", "error")]) == 1
    assert (await sim_stats(stack.gf_url))["requests"] == 1


async def test_journal_verifies_on_a_real_run_and_fails_on_a_tampered_row(stack: Stack) -> None:
    ids = [await submit_one(stack) for _ in range(3)]
    await stack.api.wait_terminal(ids, 20)
    assert "journal OK" in run_cli(stack.env, "journal", "verify")
    db = sqlite3.connect(stack.data_dir / "demat.db")
    db.execute("UPDATE journal SET data = json_set(data, '$.to', 'cancelled') WHERE seq = 4")
    db.commit()
    db.close()
    try:
        run_cli(stack.env, "journal", "verify")
    except RuntimeError as exc:
        assert "entry 4 was altered" in str(exc)
    else:
        raise AssertionError("a tampered journal verified")
