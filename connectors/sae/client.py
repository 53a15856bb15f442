"""As@lae REST, as Pastell speaks it: one call per method, no retries here.

* ``POST /sedaMessages`` multipart ``seda_message`` (bordereau) + ``attachments``
  (tar.gz); for large archives ``send_chunked_attachments=true`` opens a chunk
  session, then ``POST /sedaAttachmentsChunkFiles`` once per chunk.
* ``GET /sedaMessages/sequence:ArchiveTransfer/message:<kind>/
  originOrganizationIdentification:<agency>/originMessageIdentifier:<id>`` for the
  Acknowledgement and the ArchiveTransferReply.
* HTTP Basic with the login and the hex SHA-256 of the password (As@lae stores
  only that digest, so that is what it compares).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp

from connectors.base import PermanentError, TransientError, error_for_status, transient_from
from connectors.sae.seda import MAX_MESSAGE_BYTES

MessageKind = Literal["Acknowledgement", "ArchiveTransferReply"]
T = TypeVar("T")

_READ = 256 * 1024


@dataclass(frozen=True)
class SaeMessage:
    """What the SAE answered for one message of a transfer.

    ``ready``: here it is (``body``); ``pending``: the transfer is known, the
    message not produced yet; ``unknown``: the SAE knows no such transfer (404).
    """

    state: Literal["ready", "pending", "unknown"]
    body: bytes = b""


@dataclass(frozen=True)
class ChunkSession:
    session: str
    security: str


async def _json_object(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except ValueError as exc:
        raise PermanentError(f"{what}: HTTP {resp.status} with a body that is not JSON") from exc
    if not isinstance(body, dict) or not body:
        raise PermanentError(f"{what}: HTTP {resp.status} with an empty answer: {body!r}")
    return body


async def _window(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    """``length`` bytes of ``path`` from ``offset``, read off the event loop."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        await asyncio.to_thread(handle.seek, offset)
        left = length
        while left > 0:
            data = await asyncio.to_thread(handle.read, min(_READ, left))
            if not data:
                raise OSError(f"{path.name} ended {left} bytes before the chunk's end")
            left -= len(data)
            yield data
    finally:
        await asyncio.to_thread(handle.close)


@dataclass(frozen=True)
class AsalaeClient:
    http: aiohttp.ClientSession
    url: str  # base, e.g. https://sae.example/restservices
    login: str
    password: str
    timeout: float = 120.0

    @property
    def what(self) -> str:
        return f"As@lae {self.url}"

    @property
    def authorization(self) -> str:
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return "Basic " + base64.b64encode(f"{self.login}:{digest}".encode()).decode("ascii")

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Connection failures and unreadable local files become TransientError."""
        try:
            return await call()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transient_from(exc, self.what) from exc
        except OSError as exc:  # a stored file unreadable for now
            raise TransientError(f"{self.what}: cannot read what to send: {exc}") from exc

    async def _post(self, path: str, form: aiohttp.MultipartWriter, what: str) -> dict[str, Any]:
        async with self.http.post(
            f"{self.url}{path}",
            data=form,
            headers={"Accept": "application/json", "Authorization": self.authorization},
            # A redirected POST would not carry the files again.
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            await error_for_status(resp, what)
            return await _json_object(resp, what)

    async def ping(self) -> dict[str, Any]:
        """``GET /ping`` with the account's credentials: the service is up and takes them."""

        async def call() -> dict[str, Any]:
            async with self.http.get(
                f"{self.url}/ping",
                headers={"Accept": "application/json", "Authorization": self.authorization},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                await error_for_status(resp, f"{self.what} ping")
                return await _json_object(resp, f"{self.what} ping")

        return await self._guard(call)

    async def send(self, bordereau: Path, archive: Path) -> dict[str, Any]:
        """One multipart POST of the bordereau and the archive, streamed from disk."""
        what = f"{self.what}: POST /sedaMessages"

        async def call() -> dict[str, Any]:
            handles: list[IO[bytes]] = []
            try:
                form = aiohttp.MultipartWriter("form-data")
                for name, path, mime in (
                    ("seda_message", bordereau, "application/xml"),
                    ("attachments", archive, "application/x-gzip"),
                ):
                    handle: IO[bytes] = await asyncio.to_thread(path.open, "rb")
                    handles.append(handle)
                    part = form.append(handle, {"Content-Type": mime})
                    part.set_content_disposition("form-data", name=name, filename=path.name)
                return await self._post("/sedaMessages", form, what)
            finally:
                for handle in handles:
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(handle.close)

        return await self._guard(call)

    async def open_chunks(self, bordereau: Path) -> ChunkSession:
        """Send the bordereau alone and get the session the chunks go to."""
        what = f"{self.what}: POST /sedaMessages (chunked)"

        async def call() -> ChunkSession:
            form = aiohttp.MultipartWriter("form-data")
            data = await asyncio.to_thread(bordereau.read_bytes)  # a bordereau, not a file
            form.append(
                io.BytesIO(data), {"Content-Type": "application/xml"}
            ).set_content_disposition("form-data", name="seda_message", filename=bordereau.name)
            form.append("true").set_content_disposition(
                "form-data", name="send_chunked_attachments"
            )
            body = await self._post("/sedaMessages", form, what)
            session, security = (
                body.get("chunk_session_identifier"),
                body.get("chunk_security_identifier"),
            )
            if not session or not security:
                raise PermanentError(f"{what}: no chunk session in the answer: {body}")
            return ChunkSession(str(session), str(security))

        return await self._guard(call)

    async def send_chunk(
        self, session: ChunkSession, archive: Path, index: int, count: int, chunk_size: int
    ) -> dict[str, Any]:
        """Chunk ``index`` (1-based) of ``count``, streamed from its place in the archive."""
        what = f"{self.what}: POST /sedaAttachmentsChunkFiles ({index}/{count})"

        async def call() -> dict[str, Any]:
            offset = (index - 1) * chunk_size
            size = await asyncio.to_thread(lambda: archive.stat().st_size)
            form = aiohttp.MultipartWriter("form-data")
            fields = {
                "session_identifier": session.session,
                "security_identifier": session.security,
                "number_of_files": "1",
                "file_index": "1",
                "file_name": archive.name,
                "compression_algorithm": "TARGZ",
                "number_of_chunks": str(count),
                "chunk_index": str(index),
            }
            for name, value in fields.items():
                form.append(value).set_content_disposition("form-data", name=name)
            content = _window(archive, offset, min(chunk_size, size - offset))
            form.append(
                content, {"Content-Type": "application/octet-stream"}
            ).set_content_disposition(
                "form-data", name="chunk_content", filename=f"{archive.name}.{index}"
            )
            return await self._post("/sedaAttachmentsChunkFiles", form, what)

        return await self._guard(call)

    async def message(self, kind: MessageKind, agency: str, transfer_id: str) -> SaeMessage:
        """The Acknowledgement or ArchiveTransferReply of a transfer, if there is one yet."""
        path = (
            f"/sedaMessages/sequence:ArchiveTransfer/message:{kind}"
            f"/originOrganizationIdentification:{quote(agency, safe='')}"
            f"/originMessageIdentifier:{quote(transfer_id, safe='')}"
        )
        what = f"{self.what}: GET {kind} of {transfer_id}"

        async def call() -> SaeMessage:
            async with self.http.get(
                f"{self.url}{path}",
                headers={"Accept": "application/xml", "Authorization": self.authorization},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status == 404:
                    return SaeMessage("unknown")
                await error_for_status(resp, what)
                if resp.status != 200:  # 202, 204...: known, not produced yet
                    return SaeMessage("pending")
                body = bytearray()
                async for data in resp.content.iter_chunked(_READ):
                    body += data
                    if len(body) > MAX_MESSAGE_BYTES:
                        raise PermanentError(f"{what}: more than {MAX_MESSAGE_BYTES} bytes")
                return SaeMessage("ready", bytes(body)) if body.strip() else SaeMessage("pending")

        return await self._guard(call)
