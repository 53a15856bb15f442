"""Record the journals of real runs as replay histories (``tests/replay/histories/``).

    .venv/bin/python -m tests.replay.record

Runs ``demat serve`` (embedded + SQLite) on the real simulators, takes documents of
each flow down each path (delivered, retried, parked then retried by an operator,
cancelled; an act signed and archived, one sent alone, one rejected in the
parapheur, one acknowledged then cancelled with ``annuler``) and writes, for each,
its flow, metadata and journal as the API gives them. ``test_replay.py`` feeds
these histories back through the engine: a change that would treat one of these
past documents differently fails it.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.actes_stack import (
    ENTITY,
    post_act,
    refresh_classification,
    start_peers,
    stop_procs,
    write_config,
)
from tests.e2e.harness import Api, demat_env, run_cli, set_faults, start_demat, start_simulator

HISTORIES = Path(__file__).parent / "histories"
SETTINGS = {
    "DEMAT_POLL_FIRST": "300ms",
    "DEMAT_RETRY_LADDER": "300ms,300ms",
    "DEMAT_RETRY_IN_CALL": "1",
}


async def wait_for(api: Api, doc_id: str, states: set[str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = await api.get(f"/api/v1/documents/{doc_id}")
        if doc["state"] in states:
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"{doc_id} not in {states}")


async def keep(api: Api, name: str, doc_id: str) -> None:
    doc = await api.get(f"/api/v1/documents/{doc_id}")
    journal = await api.get(f"/api/v1/documents/{doc_id}/journal")
    HISTORIES.mkdir(exist_ok=True)
    history = {"flow": doc["flow"], "metadata": doc["metadata"], "state": doc["state"],
               "settings": {k.removeprefix("DEMAT_").lower(): v for k, v in SETTINGS.items()},
               "journal": journal}
    (HISTORIES / f"{name}.json").write_text(json.dumps(history, indent=1, ensure_ascii=False)
                                            + "\n", encoding="utf-8")
    print(f"{name}: {doc['state']}, {len(journal)} journal entries")


async def depot(api: Api, n: int) -> str:
    status, doc = await api.submit(ENTITY, [("document", f"mandat-{n}.xml", b"<m/>")],
                                   {"mandat": n})
    assert status == 201, doc
    return str(doc["id"])


async def record(tmp: Path) -> None:
    peers = await start_peers(tmp, parapheur=("--auto-sign-after", "1.5"))
    gf, gf_url = await start_simulator("gf", tmp / "gf.log")
    procs = [gf, *peers.all()]
    env = demat_env(tmp / "data", DEMAT_PORT="0", **SETTINGS, DEMAT_CONFIG=str(write_config(
        tmp / "demat.toml", peers, {"depot": {"url": f"{gf_url}/inbox"}})))
    run_cli(env, "db", "upgrade")
    token = run_cli(env, "token", "create", "--operator").strip()
    serve, url = await start_demat("serve", env, tmp / "serve.log")
    procs.append(serve)
    api = Api(url, token)
    try:
        await refresh_classification(api)
        await keep(api, "depot-delivered", (await wait_for(
            api, await depot(api, 1), {"completed"}))["id"])

        await set_faults(gf_url, [{"kind": "503", "count": 2, "retry_after": 0}])
        await keep(api, "depot-retried", (await wait_for(
            api, await depot(api, 2), {"completed"}))["id"])

        await set_faults(gf_url, [{"kind": "503", "retry_after": 0}])
        parked = await depot(api, 3)
        await wait_for(api, parked, {"failed"})
        await set_faults(gf_url, [])
        status, _ = await api.post(f"/api/v1/documents/{parked}/retry")
        assert status == 200
        await keep(api, "depot-parked-then-replayed", (await wait_for(
            api, parked, {"completed"}))["id"])

        await set_faults(gf_url, [{"kind": "503", "retry_after": 0}])
        cancelled = await depot(api, 4)
        await wait_for(api, cancelled, {"retrying"})
        status, _ = await api.post(f"/api/v1/documents/{cancelled}/cancel")
        assert status == 200
        await set_faults(gf_url, [])
        await keep(api, "depot-cancelled", cancelled)

        for name, numero, signature, archive in (("actes-signed-archived", "REC_1", True, True),
                                                 ("actes-sent-alone", "REC_2", False, False)):
            status, doc = await post_act(api, numero, signature=signature, archive=archive)
            assert status == 201, doc
            await keep(api, name, (await wait_for(api, doc["id"], {"completed"}))["id"])

        status, doc = await post_act(api, "REC_3", signature=True)
        assert status == 201, doc
        waiting = await wait_for(api, doc["id"], {"waiting"})
        while "parapheur_dossier" not in waiting["refs"]:
            waiting = await api.get(f"/api/v1/documents/{doc['id']}")
        dossier = waiting["refs"]["parapheur_dossier"]
        async with aiohttp.ClientSession() as http, http.post(
            f"{peers.parapheur.url}/dossiers/{dossier}/reject",
            data={"annotation": "Montant erroné"}, allow_redirects=False) as resp:
            assert resp.status in (303, 409), resp.status
        await keep(api, "actes-rejected-in-parapheur", (await wait_for(
            api, doc["id"], {"rejected"}))["id"])

        status, doc = await post_act(api, "REC_4")
        assert status == 201, doc
        await wait_for(api, doc["id"], {"completed"})
        status, body = await api.post(f"/api/v1/documents/{doc['id']}/actions/annuler")
        assert status == 200, body
        await asyncio.sleep(0.5)
        await keep(api, "actes-acknowledged-then-cancelled", (await wait_for(
            api, doc["id"], {"completed"}))["id"])
    finally:
        await api.close()
        await stop_procs(procs)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="record-") as tmp:
        asyncio.run(record(Path(tmp)))


if __name__ == "__main__":
    main()
