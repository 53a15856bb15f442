"""`depot` end to end: `demat serve` and the gf simulator as real processes."""

from __future__ import annotations

import sqlite3

import pytest

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


async def test_secrets_never_reach_answers_or_logs(stack: Stack) -> None:
    token, password = "tok-3f9c1e7d-never-shown", "pw-8b2d4a61-never-shown"
    async with stack.api.http.patch(f"{stack.url}/api/v1/entities/{ENTITY}", json={
        "connectors": {
            "depot": {"url": f"{stack.gf_url}/inbox", "token": token},
            "parapheur": {"url": "http://127.0.0.1:9/ws", "type": "ACTES",
                          "sous_type": "Deliberation", "login": "l", "password": password}}},
    ) as resp:
        assert resp.status == 200, await resp.text()
    await set_faults(stack.gf_url, [{"kind": "500", "count": 1}])
    doc_id = await submit_one(stack)
    done = await stack.api.wait_terminal([doc_id], 30)
    assert done[doc_id]["state"] == "completed"
    answers = [await stack.api.get(path) for path in (
        f"/api/v1/entities/{ENTITY}", "/api/v1/entities", f"/api/v1/documents/{doc_id}",
        f"/api/v1/documents/{doc_id}/journal", "/api/v1/events", "/api/v1/documents")]
    async with stack.api.http.get(f"{stack.url}/metrics") as resp:
        answers.append(await resp.text())
    await stack.serve.stop()  # every line written
    logs = (stack.data_dir.parent / "serve.log").read_text(errors="replace")
    assert answers[0]["connectors"]["depot"]["token"] == "********"
    assert "step ran" in logs, "the log under test is the broker's"
    for secret in (token, password):
        assert secret not in str(answers)
        assert secret not in logs


async def test_the_cli_lists_shows_and_checks_entities_through_the_api(stack: Stack) -> None:
    env = {**stack.env, "DEMAT_API_URL": stack.url, "DEMAT_TOKEN": stack.token}
    listed = run_cli(env, "entity", "list")
    assert f"{ENTITY}  Commune de Test  depot" in listed
    assert '"url"' in run_cli(env, "entity", "show", ENTITY)
    checked = run_cli(env, "entity", "check", ENTITY, "depot")
    assert checked.startswith(f"{ENTITY} depot: ok: inbox {stack.gf_url}/inbox answered HTTP")
    with pytest.raises(RuntimeError, match=r"entity check .* failed \(1\)"):
        # The other entity's inbox path does not exist on the simulator: a 404 is a refusal.
        run_cli(env, "entity", "check", OTHER_ENTITY, "depot")


async def test_the_cli_changes_and_removes_an_entity_through_the_api(stack: Stack) -> None:
    env = {**stack.env, "DEMAT_API_URL": stack.url, "DEMAT_TOKEN": stack.token}
    siren = "552100554"
    run_cli(env, "entity", "add", siren, "--name", "Syndicat des eaux",
            "--set", f"depot.url={stack.gf_url}/inbox")
    # Numbers given on the command line take the type of their field.
    said = run_cli(env, "entity", "set", siren, "--set", "depot.timeout=45",
                   "--set", "depot.token=s3cr3t-t0ken", "--name", "Syndicat intercommunal")
    assert said == f"entity {siren} saved (depot connector settings)\n"
    shown = await stack.api.get(f"/api/v1/entities/{siren}")
    assert shown["name"] == "Syndicat intercommunal"
    assert shown["connectors"]["depot"]["timeout"] == 45
    assert shown["connectors"]["depot"]["token"] == "********"
    with pytest.raises(RuntimeError,
                       match=r"(?s)422: .*connectors\.depot\.timeout: Input should be greater"):
        run_cli(env, "entity", "set", siren, "--set", "depot.timeout=-1")
    run_cli(env, "entity", "set", siren, "--unset", "depot.timeout")
    after = (await stack.api.get(f"/api/v1/entities/{siren}"))["connectors"]["depot"]
    assert after["timeout"] == 30.0 and after["token"] == "********"  # the default again
    assert run_cli(env, "entity", "delete", siren, "--yes") == f"entity {siren} removed\n"
    async with stack.api.http.get(f"{stack.url}/api/v1/entities/{siren}") as resp:
        assert resp.status == 404
