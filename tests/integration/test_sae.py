"""The sae connector against the As@lae simulator, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.retry import AttemptRecord, InCallRetry, RetryPolicy
from connectors.base import (
    Done,
    FileView,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    StepContext,
    TransientError,
)
from connectors.sae import (
    Agencies,
    ArchiveDescription,
    ArchiveFile,
    AsalaeClient,
    SaeConnector,
    build_transfer,
    pack_objects,
    read_acknowledgement,
    read_transfer_reply,
    write_archive,
)
from simulators.asalae import Settings, build_app
from simulators.common import serving, stats_of
from simulators.faults import FaultRule

ROOT = Path(__file__).resolve().parents[2]
DOC = "0195d3a0-7b1c-7000-8000-00000000a1c0"
TRANSFER = f"demat-{DOC}"
ENTITY = "213501234"
PASSWORD = "s3cret-sae"


class Crash(Exception):
    """The worker process dying at a chosen point."""


def stored_file(
    folder: Path,
    name: str,
    content: bytes,
    role: str = "document",
    content_type: str = "application/pdf",
) -> FileView:
    digest = hashlib.sha256(content).hexdigest()
    path = folder / f"blob-{digest}"
    path.write_bytes(content)
    return FileView(f"f-{name}", role, name, content_type, len(content), digest, path)


class Step:
    """Builds the StepContext the worker would hand the connector, keeping its refs."""

    def __init__(self, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        self.tmp_path, self.http = tmp_path, http
        self.refs: dict[str, str] = {}
        self.attempts: list[AttemptRecord] = []
        self.crash_on: str | None = None  # saving this ref "kills the process"
        self.runs = 0
        self.files = [
            stored_file(tmp_path, "deliberation.pdf", b"%PDF-1.7\n" + b"d" * 5000),
            stored_file(tmp_path, "annexe.xml", b"<annexe/>", "annexe", "application/xml"),
        ]
        self.metadata: dict[str, Any] = {
            "objet": "Délibération 2024-042",
            "sae": {"keywords": ["finances"], "start_date": "2024-03-01", "end_date": "2024-03-01"},
        }

    async def save_ref(self, key: str, value: str) -> None:
        if key == self.crash_on:
            raise Crash(key)
        self.refs[key] = value

    def context(self, config: Mapping[str, Any], attempts: int, kind: str) -> StepContext:
        self.runs += 1
        workdir = self.tmp_path / f"work-{self.runs}"
        workdir.mkdir()
        policy = RetryPolicy(in_call_attempts=attempts, in_call_initial=0.01, in_call_max=0.05)
        return StepContext(
            document_id=DOC,
            flow="actes",
            entity=ENTITY,
            step="archive",
            run=self.runs,
            kind=kind,
            metadata=self.metadata,
            files=self.files,
            config=config,
            refs=dict(self.refs),
            http=self.http,
            workdir=workdir,
            retry=InCallRetry(policy, record=self.attempts.append),
            save_ref=self.save_ref,
        )

    async def run(
        self, config: Mapping[str, Any], *, attempts: int = 3, kind: str = "run"
    ) -> Outcome:
        return await SaeConnector().run(self.context(config, attempts, kind))


@pytest.fixture
async def step(tmp_path: Path) -> AsyncIterator[Step]:
    async with aiohttp.ClientSession() as http:
        yield Step(tmp_path, http)


@dataclass
class Served:
    app: web.Application
    url: str
    http: aiohttp.ClientSession

    def config(self, **changes: Any) -> dict[str, Any]:
        return {
            "url": self.url,
            "login": "demat",
            "password": PASSWORD,
            "archival_agency": "FRAD035",
            "transferring_agency": "SIREN213501234",
            "originating_agency": "213501234",
            "archival_agreement": "ACCORD-DELIB",
            "timeout": 10,
            **changes,
        }

    @property
    def stats(self) -> dict[str, int]:
        return stats_of(self.app)

    async def transfers(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/_control/transfers") as resp:
            body: dict[str, list[dict[str, Any]]] = await resp.json()
            return body["transfers"]


Start = Callable[..., Awaitable[Served]]


@pytest.fixture
async def sae(step: Step) -> AsyncIterator[Start]:
    """Starts the simulator: ``await sae(faults=[...], ack_after=...)``."""
    async with AsyncExitStack() as stack:

        async def start(faults: tuple[FaultRule, ...] = (), **settings: Any) -> Served:
            app = build_app(
                settings=Settings(password=PASSWORD, **settings),
                faults=list(faults),
                store_dir=step.tmp_path / "sae",
            )
            url = await stack.enter_async_context(serving(app))
            return Served(app, url, step.http)

        yield start


async def test_transfer_acknowledged_and_accepted(step: Step, sae: Start) -> None:
    server = await sae()
    first = await step.run(server.config())
    assert first == Pending(3600.0, remote_ref=TRANSFER, note="transferred to the SAE")
    assert step.refs == {"sae_transfer": TRANSFER, "sae_sent": "sent"}

    done = await step.run(server.config(), kind="poll")

    assert isinstance(done, Done)
    assert done.metadata == {
        "archive": {"transfer_id": TRANSFER, "archive_id": "FRAD035_00001", "reply_code": "000"}
    }
    [atr] = done.files
    assert (atr.role, atr.name, atr.content_type) == (
        "atr",
        f"{TRANSFER}-ATR.xml",
        "application/xml",
    )
    reply = read_transfer_reply(atr.path.read_bytes())
    assert (reply.reply_code, reply.transfer_id, reply.archive_id) == (
        "000",
        TRANSFER,
        "FRAD035_00001",
    )
    assert step.refs["sae_ack"] == "ACK_1"
    [received] = await server.transfers()
    assert received["files"] == [
        {"uri": "deliberation.pdf", "filename": "deliberation.pdf",
         "sha256": step.files[0].sha256, "size": 5009},
        {"uri": "annexe.xml", "filename": "annexe.xml", "sha256": step.files[1].sha256,
         "size": 9},
    ]
    counts = server.stats
    assert (
        counts["transfers"],
        counts["accepted"],
        counts["refused"],
        counts["duplicates"],
        counts["requests"],
    ) == (1, 1, 0, 0, 3)


async def test_polls_wait_for_the_acknowledgement_then_the_reply(step: Step, sae: Start) -> None:
    server = await sae(ack_after=0.3, atr_after=0.3)
    assert isinstance(await step.run(server.config()), Pending)

    waiting_ack = await step.run(server.config(), kind="poll")
    assert isinstance(waiting_ack, Pending)
    assert waiting_ack.note == "waiting for the SAE's acknowledgement (pending)"
    await asyncio.sleep(0.35)
    waiting_atr = await step.run(server.config(), kind="poll")
    assert isinstance(waiting_atr, Pending)
    assert waiting_atr.note == "acknowledged; waiting for the SAE's reply (pending)"
    assert step.refs["sae_ack"] == "ACK_1"
    await asyncio.sleep(0.35)
    done = await step.run(server.config(), kind="poll")

    assert isinstance(done, Done) and done.metadata["archive"]["archive_id"] == "FRAD035_00001"
    # The acknowledgement is fetched once; the reply is asked for twice.
    assert server.stats["requests"] == 1 + 1 + 2 + 1


async def test_refusal_is_rejected_with_the_code_and_the_reason(step: Step, sae: Start) -> None:
    server = await sae(
        refuse_ratio=1.0,
        refuse_code="302",
        refuse_reason="Producteur absent de l'accord de versement",
    )
    await step.run(server.config())

    rejected = await step.run(server.config(), kind="poll")

    assert isinstance(rejected, Rejected)
    assert rejected.reason == ("SAE refused the transfer: 302 producer not in the agreement: "
                               "Producteur absent de l'accord de versement")
    assert rejected.metadata == {"archive": {"transfer_id": TRANSFER, "reply_code": "302"}}
    [atr] = rejected.files
    assert atr.role == "atr" and read_transfer_reply(atr.path.read_bytes()).reply_code == "302"
    assert (server.stats["accepted"], server.stats["refused"]) == (0, 1)


def _description(step: Step, sha256: dict[str, str] | None = None) -> ArchiveDescription:
    return ArchiveDescription(
        document_id=DOC,
        title="Délibération",
        files=tuple(
            ArchiveFile(
                role=f.role,
                name=f.name,
                path=f.path,
                size=f.size,
                mime=f.content_type,
                sha256=(sha256 or {}).get(f.name, f.sha256),
            )
            for f in step.files
        ),
    )


AGENCIES = Agencies(
    archival_agency="FRAD035", transferring_agency="SIREN213501234", originating_agency="213501234"
)


async def test_digest_mismatch_is_refused_by_the_sae(step: Step, sae: Start) -> None:
    server = await sae()
    wrong = hashlib.sha256(b"another file").hexdigest()
    when = datetime(2024, 5, 1, tzinfo=UTC)
    # The bordereau declares a digest the archived bytes do not have.
    lying = build_transfer(_description(step, {"deliberation.pdf": wrong}), AGENCIES, when)
    honest = build_transfer(_description(step), AGENCIES, when)
    bordereau, archive = step.tmp_path / "bordereau.xml", step.tmp_path / "archive.tar.gz"
    bordereau.write_bytes(lying.bordereau)
    write_archive(honest.objects, archive)
    client = AsalaeClient(step.http, server.url, "demat", PASSWORD)

    await client.send(bordereau, archive)
    answer = await client.message("ArchiveTransferReply", "SIREN213501234", TRANSFER)

    assert answer.state == "ready"
    reply = read_transfer_reply(answer.body)
    assert reply.reply_code == "207"
    assert reply.reason == (
        f"invalid digest(s): Empreinte invalide pour deliberation.pdf : déclarée {wrong}, "
        f"calculée {step.files[0].sha256}"
    )
    assert (server.stats["refused"], server.stats["accepted"]) == (1, 0)


async def test_stored_file_not_matching_its_digest_is_never_sent(step: Step, sae: Start) -> None:
    server = await sae()
    step.files[1].path.write_bytes(b"<changed/>")  # the blob no longer matches its sha256

    with pytest.raises(PermanentError, match=re.escape("stored file 'annexe.xml' does not match")):
        await step.run(server.config())
    assert server.stats["requests"] == 0 and "sae_transfer" not in step.refs


async def test_invalid_bordereau_is_refused_with_400(step: Step, sae: Start) -> None:
    server = await sae()
    bordereau, archive = step.tmp_path / "bordereau.xml", step.tmp_path / "archive.tar.gz"
    bordereau.write_bytes(b'<ArchiveTransfer xmlns="fr:gouv:culture:archivesdefrance:seda:v2.1"/>')
    archive.write_bytes(b"")
    client = AsalaeClient(step.http, server.url, "demat", PASSWORD)

    with pytest.raises(PermanentError, match=r"HTTP 400 .*bordereau non conforme"):
        await client.send(bordereau, archive)
    assert (server.stats["invalid"], server.stats["transfers"]) == (1, 0)


async def test_large_archive_is_sent_in_chunks(step: Step, sae: Start) -> None:
    server = await sae()
    content = random.Random(7).randbytes(3 * 1024 * 1024)  # incompressible
    step.files.append(stored_file(step.tmp_path, "scan.pdf", content))
    size = write_archive(pack_objects(_description(step).files), step.tmp_path / "expected.tgz")
    config = server.config(chunk_threshold=1024 * 1024)

    assert isinstance(await step.run(config), Pending)
    done = await step.run(config, kind="poll")

    assert isinstance(done, Done) and done.metadata["archive"]["reply_code"] == "000"
    assert server.stats["chunks"] == math.ceil(size / (1024 * 1024)) == 4
    assert (server.stats["transfers"], server.stats["accepted"]) == (1, 1)
    [received] = await server.transfers()
    assert received["files"][2] == {
        "uri": "scan.pdf",
        "filename": "scan.pdf",
        "sha256": step.files[2].sha256,
        "size": 3 * 1024 * 1024,
    }


async def test_rerun_after_a_crash_after_the_post_does_not_transfer_twice(
    step: Step, sae: Start
) -> None:
    server = await sae()
    step.crash_on = "sae_sent"  # the POST went through, then the worker died
    with pytest.raises(Crash):
        await step.run(server.config())
    assert step.refs == {"sae_transfer": TRANSFER} and server.stats["transfers"] == 1

    step.crash_on = None
    again = await step.run(server.config())

    assert again == Pending(3600.0, remote_ref=TRANSFER, note="the SAE already had this transfer")
    assert step.refs["sae_sent"] == "found at the SAE"
    assert (server.stats["transfers"], server.stats["duplicates"]) == (1, 0)
    assert server.stats["requests"] == 2  # the POST, then one question
    assert isinstance(await step.run(server.config(), kind="poll"), Done)


async def test_lost_answer_is_reconciled_by_the_quick_retry(step: Step, sae: Start) -> None:
    lost = FaultRule(kind="reset", phase="after", count=1, path="/sedaMessages", method="POST")
    server = await sae(faults=(lost,))

    outcome = await step.run(server.config())

    assert outcome == Pending(3600.0, remote_ref=TRANSFER, note="the SAE already had this transfer")
    assert len(step.attempts) == 1 and "reset" in step.attempts[0].error.lower()
    assert (server.stats["transfers"], server.stats["duplicates"]) == (1, 0)


async def test_503_is_transient_then_the_rerun_sends(step: Step, sae: Start) -> None:
    unavailable = FaultRule(kind="503", retry_after=30, count=1)
    server = await sae(faults=(unavailable,))

    with pytest.raises(TransientError, match="HTTP 503") as caught:
        await step.run(server.config())
    assert caught.value.retry_after == 30
    assert step.refs == {"sae_transfer": TRANSFER} and server.stats["transfers"] == 0

    # The SAE never got it: the re-run asks, hears "unknown", and sends.
    again = await step.run(server.config())
    assert isinstance(again, Pending) and again.note == "transferred to the SAE"
    assert (server.stats["transfers"], server.stats["duplicates"]) == (1, 0)


async def test_wrong_password_is_permanent(step: Step, sae: Start) -> None:
    server = await sae()
    with pytest.raises(PermanentError, match="HTTP 401"):
        await step.run(server.config(password="not-the-password"))
    assert server.stats["transfers"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": None}, "connectors.sae.url: Input should be a valid string (got None)"),
        ({"url": "ftp://sae"}, "connectors.sae.url: must be an http(s) URL (got 'ftp://sae')"),
        ({"chunk_treshold": 5}, "connectors.sae.chunk_treshold: unknown setting"),
    ],
)
async def test_configuration_errors_say_what_to_fix(
    step: Step, sae: Start, change: dict[str, Any], message: str
) -> None:
    server = await sae()
    with pytest.raises(
        PermanentError, match=re.escape(f"entity {ENTITY}: ") + ".*" + re.escape(message)
    ):
        await step.run(server.config(**change))


async def test_metadata_picks_the_files_and_describes_the_document(step: Step, sae: Start) -> None:
    server = await sae()
    step.metadata = {"sae": {"title": "Acte 2024-042", "level": "File", "roles": ["document"]}}

    await step.run(server.config())

    [received] = await server.transfers()
    assert [f["uri"] for f in received["files"]] == ["deliberation.pdf"]
    step.metadata = {"sae": {"level": "Dossier"}}
    step.refs.clear()
    with pytest.raises(PermanentError, match="cannot describe it for the SAE: level: Input"):
        await step.run(server.config())


async def test_acknowledgement_read_back_from_the_simulator(step: Step, sae: Start) -> None:
    server = await sae()
    await step.run(server.config())
    client = AsalaeClient(step.http, server.url, "demat", PASSWORD)

    answer = await client.message("Acknowledgement", "SIREN213501234", TRANSFER)
    unknown = await client.message("Acknowledgement", "SIREN213501234", "demat-other")

    ack = read_acknowledgement(answer.body)
    assert (ack.received_identifier, ack.sender, ack.receiver) == (
        TRANSFER,
        "FRAD035",
        "SIREN213501234",
    )
    assert unknown.state == "unknown"


async def test_command_line_simulator(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.asalae",
        "--port",
        "0",
        "--password",
        PASSWORD,
        "--ack-after",
        "5",
        "--store-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert re.fullmatch(r"LISTENING http://127\.0\.0\.1:\d+\n", line), line
        url = line.split()[1]
        digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
        hashed = "Basic " + base64.b64encode(f"demat:{digest}".encode()).decode()
        plain = "Basic " + base64.b64encode(f"demat:{PASSWORD}".encode()).decode()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/ping", headers={"Authorization": hashed}) as resp:
                assert resp.status == 200
            async with http.get(f"{url}/ping", headers={"Authorization": plain}) as resp:
                assert resp.status == 401  # the plain password is not what As@lae compares
            async with http.get(f"{url}/stats") as resp:
                counts = await resp.json()
        assert {
            k: counts[k] for k in ("requests", "transfers", "accepted", "refused", "duplicates")
        } == {"requests": 2, "transfers": 0, "accepted": 0, "refused": 0, "duplicates": 0}
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
