"""The depot connector against the finance-software simulator and a real folder."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.retry import AttemptRecord, InCallRetry, RetryPolicy
from connectors.base import Done, FileView, PermanentError, StepContext, TransientError
from connectors.depot import DepotConnector
from simulators.common import serving, stats_of
from simulators.faults import FaultRule
from simulators.gf import build_app

DOC = "0195d3a0-7b1c-7000-8000-000000000001"
ENTITY = "213501234"


def stored_file(folder: Path, name: str, content: bytes, role: str = "document") -> FileView:
    digest = hashlib.sha256(content).hexdigest()
    path = folder / f"blob-{digest}"
    path.write_bytes(content)
    return FileView(f"f-{name}", role, name, "application/pdf", len(content), digest, path)


class Step:
    """Builds the StepContext the worker would hand the connector."""

    def __init__(self, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        self.tmp_path = tmp_path
        self.http = http
        self.attempts: list[AttemptRecord] = []
        self.files = [
            stored_file(tmp_path, "mandat.pdf", b"%PDF-1.7 mandat" * 3000),
            stored_file(tmp_path, "pes.xml", b"<PES_Aller/>"),
            stored_file(tmp_path, "ar.xml", b"<ack/>", role="acknowledgement"),
        ]
        self.metadata = {"objet": "Mandat n°42", "montant": "1200.00"}

    def context(self, config: Mapping[str, Any], *, attempts: int = 3, run: int = 1) -> StepContext:
        policy = RetryPolicy(in_call_attempts=attempts, in_call_initial=0.01, in_call_max=0.05)
        return StepContext(
            document_id=DOC,
            flow="helios",
            entity=ENTITY,
            step="deliver",
            run=run,
            kind="run" if run == 1 else "retry",
            metadata=self.metadata,
            files=self.files,
            config=config,
            refs={},
            http=self.http,
            workdir=self.tmp_path,
            retry=InCallRetry(policy, record=self.attempts.append),
        )

    async def run(self, config: Mapping[str, Any], **options: Any) -> Done:
        outcome = await DepotConnector().run(self.context(config, **options))
        assert isinstance(outcome, Done)
        return outcome

    def manifest(self) -> dict[str, Any]:
        documents = self.files[:2]
        return {
            "document_id": DOC,
            "flow": "helios",
            "entity": ENTITY,
            "metadata": self.metadata,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size, "role": "document"}
                      for f in documents],
        }


@pytest.fixture
async def step(tmp_path: Path) -> AsyncIterator[Step]:
    async with aiohttp.ClientSession() as http:
        yield Step(tmp_path, http)


class Inbox:
    """The simulator as the test sees it: its state, and the headers it was sent."""

    def __init__(self, app: web.Application, url: str, http: aiohttp.ClientSession) -> None:
        self.app, self.url, self.http = app, url, http
        self.headers: list[dict[str, str]] = []
        app.on_response_prepare.append(self._record)

    async def _record(self, request: web.Request, _response: web.StreamResponse) -> None:
        if request.method == "POST" and request.path.startswith("/inbox"):
            self.headers.append(dict(request.headers))

    @property
    def config(self) -> dict[str, Any]:
        return {"url": f"{self.url}/inbox", "timeout": 5}

    @property
    def stats(self) -> dict[str, int]:
        return stats_of(self.app)

    async def receipts(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/inbox") as resp:
            body: dict[str, list[dict[str, Any]]] = await resp.json()
            return body["receipts"]


@pytest.fixture
async def inbox(step: Step, request: pytest.FixtureRequest) -> AsyncIterator[Inbox]:
    rules: list[FaultRule] = getattr(request, "param", [])
    app = build_app(faults=rules, store_dir=step.tmp_path / "gf")
    served = Inbox(app, "", step.http)
    async with serving(app) as served.url:
        yield served


def faults(*rules: FaultRule) -> pytest.MarkDecorator:
    """Serve the inbox of the decorated test with these fault rules."""
    return pytest.mark.parametrize("inbox", [list(rules)], indirect=True, ids=["faults"])


async def test_delivers_once_with_metadata_and_files(step: Step, inbox: Inbox) -> None:
    done = await step.run({**inbox.config, "token": "s3cret"})

    [receipt] = await inbox.receipts()
    assert done.metadata == {"depot": {"receipt": receipt["receipt"], "status": 201}}
    assert done.note == "delivered"
    assert receipt["key"] == DOC
    assert receipt["metadata"] == step.manifest()
    # The sha256 the peer computed; the role is the broker's word.
    assert receipt["files"] == [{k: v for k, v in f.items() if k != "role"}
                                for f in step.manifest()["files"]]
    stored = sorted((step.tmp_path / "gf" / receipt["receipt"]).iterdir())
    assert [p.read_bytes() for p in stored] == [f.path.read_bytes() for f in step.files[:2]]
    assert step.attempts == []
    [headers] = inbox.headers
    assert headers["Idempotency-Key"] == DOC
    assert headers["Authorization"] == "Bearer s3cret"


@faults(FaultRule(kind="503", count=2, retry_after=0))
async def test_transient_503_is_retried_within_the_run(step: Step, inbox: Inbox) -> None:
    done = await step.run(inbox.config)
    assert done.metadata["depot"]["status"] == 201
    assert [a.try_number for a in step.attempts] == [1, 2]
    assert "HTTP 503" in step.attempts[0].error
    assert inbox.stats["faults_503"] == 2 and inbox.stats["received"] == 1


@faults(FaultRule(kind="503", retry_after=30))
async def test_long_retry_after_is_handed_back_not_slept(step: Step, inbox: Inbox) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        await step.run(inbox.config)
    assert time.monotonic() - started < 2
    assert caught.value.retry_after == 30
    assert step.attempts == [] and inbox.stats["requests"] == 1


async def test_peer_refusal_is_permanent_and_quotes_the_peer(step: Step, inbox: Inbox) -> None:
    # The inbox caps metadata.json at 1 MiB and says so with a 400.
    step.metadata = {"annexe": "x" * (1024 * 1024 + 1)}
    with pytest.raises(PermanentError) as caught:
        await step.run(inbox.config)
    assert "HTTP 400" in str(caught.value)
    assert "part 'metadata.json' is larger than" in str(caught.value)
    assert inbox.stats["requests"] == 1 and step.attempts == []


async def test_refused_connection_is_transient(step: Step, unused_port: int) -> None:
    with pytest.raises(TransientError, match="ClientConnectorError"):
        await step.run({"url": f"http://127.0.0.1:{unused_port}/inbox"})
    assert len(step.attempts) == 2  # three quick tries, two waits


@faults(FaultRule(kind="hang"))
async def test_hanging_peer_times_out_as_transient(step: Step, inbox: Inbox) -> None:
    with pytest.raises(TransientError, match="timed out"):
        await step.run({**inbox.config, "timeout": 0.2}, attempts=1)


@faults(FaultRule(kind="reset", phase="after", count=1))
async def test_lost_answer_is_reconciled_on_the_next_run(step: Step, inbox: Inbox) -> None:
    with pytest.raises(TransientError, match="reset"):
        await step.run(inbox.config, attempts=1)
    [receipt] = await inbox.receipts()  # stored, though the answer was lost

    done = await step.run(inbox.config, attempts=1, run=2)

    assert done.metadata == {"depot": {"receipt": receipt["receipt"], "status": 409}}
    assert done.note == "already received"
    assert len(await inbox.receipts()) == 1
    assert inbox.stats["received"] == 1 and inbox.stats["replays"] == 1


@faults(FaultRule(kind="refuse", phase="after", count=1))
async def test_lost_answer_is_reconciled_by_a_quick_retry(step: Step, inbox: Inbox) -> None:
    done = await step.run(inbox.config)
    assert done.metadata["depot"]["status"] == 409
    assert len(step.attempts) == 1 and len(await inbox.receipts()) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, f"entity {ENTITY}: connectors.depot: no depot endpoint: set url (http) or path"),
        ({"mode": "ftp", "url": "http://x"}, "connectors.depot.mode: Input should be 'http' or"),
        ({"url": "inbox.example"}, "connectors.depot.url: must be an http(s) URL (got 'inbox"),
        ({"url": "http://x/inbox", "timeout": 0}, "connectors.depot.timeout: Input should be "
                                                  "greater than 0 (got 0)"),
        ({"mode": "folder", "path": "relative/dir"}, "connectors.depot.path: must be an "
                                                      "absolute directory path"),
        ({"url": "http://x", "tocken": "t"}, "connectors.depot.tocken: unknown setting"),
    ],
)
async def test_configuration_errors_say_what_to_fix(
    step: Step, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)):
        await step.run(config)


async def test_no_document_file_is_permanent(step: Step, inbox: Inbox) -> None:
    step.files = step.files[2:]
    with pytest.raises(PermanentError, match="no file with role 'document'"):
        await step.run(inbox.config)
    assert inbox.stats["requests"] == 0


async def test_folder_drop(step: Step) -> None:
    target = step.tmp_path / "ged"
    target.mkdir()
    done = await step.run({"path": str(target)})

    assert done.note == "delivered"
    assert done.metadata == {
        "depot": {"folder": str(target / DOC), "sidecar": str(target / f"{DOC}.json")}
    }
    sidecar = json.loads((target / f"{DOC}.json").read_text(encoding="utf-8"))
    assert sidecar == step.manifest()
    assert sorted(p.name for p in (target / DOC).iterdir()) == ["mandat.pdf", "pes.xml"]
    assert (await step.run({"mode": "folder", "path": str(target)})).note == "already delivered"


async def test_folder_drop_into_missing_dir_is_permanent(step: Step) -> None:
    target = step.tmp_path / "absent"
    with pytest.raises(PermanentError, match=re.escape(str(target))):
        await step.run({"mode": "folder", "path": str(target)})


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, "no VmHWM in /proc/self/status"
    return int(match.group(1)) * 1024


def _big_file(folder: Path, size: int) -> FileView:
    path = folder / "big.bin"
    digest = hashlib.sha256()
    block = bytes(range(256)) * 4096  # 1 MiB
    with path.open("wb") as out:
        for _ in range(size // len(block)):
            out.write(block)
            digest.update(block)
    return FileView(
        "f-big", "document", "big.bin", "application/pdf", size, digest.hexdigest(), path
    )


async def test_memory_stays_flat_for_a_large_file(step: Step, inbox: Inbox) -> None:
    size = 64 * 1024 * 1024
    step.files = [_big_file(step.tmp_path, size)]
    if not _peak_rss_reset():
        pytest.fail("cannot reset the peak RSS through /proc/self/clear_refs")
    baseline = _peak_rss()

    await step.run(inbox.config)  # client and simulator both run in this process

    growth = _peak_rss() - baseline
    [receipt] = await inbox.receipts()
    assert receipt["files"][0]["sha256"] == step.files[0].sha256
    assert growth < size // 4, f"peak RSS grew by {growth >> 20} MiB for a 64 MiB file"
    # The measure does see a whole-file read, so the bound above means something.
    _peak_rss_reset()
    baseline = _peak_rss()
    whole = step.files[0].path.read_bytes()
    assert _peak_rss() - baseline >= size * 0.9
    del whole
