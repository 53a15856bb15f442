"""``demat demo`` as the README starts it, and what it leaves behind once stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from tests.e2e.harness import ROOT


async def test_the_demo_runs_with_its_options_and_leaves_nothing_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"  # the simulators' temporary folders go here
    scratch.mkdir()
    data_dir = tmp_path / "demo-data"
    env = {**os.environ, "TMPDIR": str(scratch), "DEMAT_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "demo", "--data-dir", str(data_dir), "--port", "0",
        "--documents", "2", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    said: dict[str, str] = {}
    try:
        async with asyncio.timeout(120):
            while "INVOICES" not in said:  # the last line it prints
                line = (await proc.stdout.readline()).decode()
                assert line, f"the demo stopped early; it said {said}"
                key, sep, value = line.strip().partition("=")
                if sep:
                    said[key] = value
        assert Path(said["DATA_DIR"]) == data_dir.resolve()
        assert (data_dir / "demat.db").is_file()
        ids = said["DOCUMENTS"].split(",")
        assert len(ids) == 5  # two acts, two deliveries, a PES
        assert said["HELIOS_DOCUMENT"] == ids[-1]
        assert said["WATCH"] == f"{said['API_URL']}/api/v1/documents/{ids[-1]}/journal"
        headers = {"Authorization": f"Bearer {said['TOKEN']}"}
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession(headers=headers) as http:
            while True:
                states = []
                for doc_id in ids:
                    async with http.get(f"{said['API_URL']}/api/v1/documents/{doc_id}") as r:
                        states.append((await r.json())["state"])
                if all(s == "completed" for s in states) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        assert states == ["completed"] * 5, states
        # The PES went through the parapheur: its signed copy and the acquit are kept.
        async with aiohttp.ClientSession(headers=headers) as http, http.get(
                f"{said['API_URL']}/api/v1/documents/{ids[-1]}") as r:
            pes_doc = await r.json()
        roles = {f["role"] for f in pes_doc["files"]}
        assert {"pes", "pes_signe", "bordereau_signature", "acquit", "atr"} <= roles, roles
        # The invoices: fetched, given a visa, delivered, waiting for their statuses.
        invoices = said["INVOICES"].split(",")
        assert len(invoices) == 2
        async with aiohttp.ClientSession(headers=headers) as http:
            while True:
                found = []
                for doc_id in invoices:
                    async with http.get(f"{said['API_URL']}/api/v1/documents/{doc_id}") as r:
                        found.append(await r.json())
                if all(d["step"] == "status" and d["state"] == "waiting" for d in found) \
                        or time.monotonic() > deadline + 30:
                    break
                await asyncio.sleep(0.5)
        for doc in found:
            assert (doc["state"], doc["step"]) == ("waiting", "status"), doc
            assert {"facture", "facture_visee", "pivot", "donnees"} <= {
                f["role"] for f in doc["files"]}, doc["files"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await proc.wait()
    # The simulators got their stop too: what they made for the run goes with it.
    for _ in range(50):
        if not list(scratch.iterdir()):
            break
        await asyncio.sleep(0.2)
    assert sorted(p.name for p in scratch.iterdir()) == []
