"""HTTP side of the i-Parapheur SOAP contract: one typed method per operation.

Every call is one POST of a SOAP 1.1 envelope with ``SOAPAction: ""`` and, if
configured, HTTP Basic auth. Errors map onto the broker's two kinds:

* connection failures, timeouts, 408/429/5xx without a SOAP fault: TransientError;
* a SOAP fault (whatever the HTTP status), a ``MessageRetour`` KO, 4xx, an
  answer that is not the expected SOAP message: PermanentError, quoting the parapheur.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
from lxml import etree

from broker.outcomes import PermanentError, TransientError
from broker.retry import parse_retry_after
from connectors.base import transient_from
from connectors.parapheur import soap
from connectors.parapheur.soap import Dossier, LogDossier, MessageRetour, NewDossier

# Small answers (lists, history, acknowledgements) are read into memory up to this.
SMALL_ANSWER_MAX = 16 * 1024 * 1024
_CHUNK = 256 * 1024


def _open_write(path: Path) -> BinaryIO:
    return path.open("wb")


def _open_read(path: Path) -> BinaryIO:
    return path.open("rb")


@dataclass(frozen=True)
class ParapheurClient:
    http: aiohttp.ClientSession
    url: str  # the no-MTOM endpoint, e.g. https://host/ws-iparapheur-no-mtom
    login: str | None = None
    password: str | None = None
    timeout: float = 120.0

    def _what(self, operation: str) -> str:
        return f"parapheur {operation} at {self.url}"

    def _headers(self, size: int | None = None) -> dict[str, str]:
        headers = {"Content-Type": soap.CONTENT_TYPE, "SOAPAction": soap.SOAP_ACTION}
        if size is not None:
            headers["Content-Length"] = str(size)
        if self.login:
            pair = f"{self.login}:{self.password or ''}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode('ascii')}"
        return headers

    async def _post(
        self, operation: str, body: bytes | AsyncIterator[bytes], size: int | None = None
    ) -> aiohttp.ClientResponse:
        try:
            return await self.http.post(
                self.url,
                data=body,
                headers=self._headers(size),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,  # a redirected POST would not carry the envelope again
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transient_from(exc, self._what(operation)) from exc

    def _check_http(self, resp: aiohttp.ClientResponse, operation: str, raw: bytes) -> None:
        """Non-2xx: a SOAP fault body wins (permanent); otherwise the status decides."""
        if resp.status < 300:
            return
        fault = soap.fault_in(raw, operation)
        if fault is not None:
            raise fault
        excerpt = " ".join(raw[:2000].decode("utf-8", "replace").split())[:300]
        message = f"{self._what(operation)}: HTTP {resp.status} {resp.reason or ''}".rstrip()
        if excerpt:
            message = f"{message}: {excerpt}"
        if resp.status in (408, 425, 429) or resp.status >= 500:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise TransientError(message, retry_after=retry_after)
        raise PermanentError(message)

    def _check_mtom(self, resp: aiohttp.ClientResponse, operation: str) -> None:
        if resp.content_type.startswith("multipart/"):
            raise PermanentError(
                f"{self._what(operation)}: the endpoint answers MTOM ({resp.content_type}); "
                "configure the /ws-iparapheur-no-mtom endpoint"
            )

    async def _read_small(self, resp: aiohttp.ClientResponse, operation: str) -> bytes:
        raw = bytearray()
        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                raw += chunk
                if len(raw) > SMALL_ANSWER_MAX:
                    raise PermanentError(
                        f"{self._what(operation)}: answer larger than {SMALL_ANSWER_MAX} bytes"
                    )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transient_from(exc, self._what(operation)) from exc
        return bytes(raw)

    async def _small_call(self, operation: str, body: bytes) -> etree._Element:
        resp = await self._post(operation, body)
        async with resp:
            raw = await self._read_small(resp, operation)
            self._check_http(resp, operation, raw)
            self._check_mtom(resp, operation)
        return soap.parse_response(raw, operation)

    # --- operations ----------------------------------------------------------------------

    async def get_liste_types(self) -> list[str]:
        el = await self._small_call("GetListeTypes", soap.simple_request("GetListeTypes"))
        return soap.values(el, "TypeTechnique")

    async def get_liste_sous_types(self, type_technique: str) -> list[str]:
        request = soap.simple_request("GetListeSousTypes", type_technique)
        return soap.values(await self._small_call("GetListeSousTypes", request), "SousType")

    async def creer_dossier(self, new: NewDossier) -> str:
        """Create the dossier; return its DossierID (the v5 bridge answers its own)."""
        operation = "CreerDossier"
        body = soap.creer_dossier_request(new)
        try:
            size = await asyncio.to_thread(body.size)
        except OSError as exc:
            raise transient_from(exc, f"reading {new.document.path.name}") from exc
        resp = await self._post(operation, self._stream(body), size)
        async with resp:
            raw = await self._read_small(resp, operation)
            self._check_http(resp, operation, raw)
            self._check_mtom(resp, operation)
        el = soap.parse_response(raw, operation)
        soap.check_retour(operation, el)
        server_id = (soap.values(el, "DossierID") or [""])[0]
        return server_id or new.dossier_id

    async def _stream(self, body: soap.StreamedBody) -> AsyncIterator[bytes]:
        """The body piece by piece; files are read in a thread, never whole."""
        for part in body.parts:
            if isinstance(part, bytes):
                yield part
                continue
            handle = await asyncio.to_thread(_open_read, part)
            try:
                while piece := await asyncio.to_thread(handle.read, soap.B64_READ):
                    yield base64.b64encode(piece)
            finally:
                await asyncio.to_thread(handle.close)

    async def get_histo_dossier(self, dossier_id: str) -> list[LogDossier]:
        """The dossier's log, oldest first; DossierUnknown when the parapheur has none."""
        operation = "GetHistoDossier"
        el = await self._small_call(operation, soap.simple_request(operation, dossier_id))
        soap.check_retour(operation, el)
        history = soap.parse_histo(el)
        if not history:
            # Pastell's rule: a dossier the parapheur knows always has a log entry.
            raise soap.DossierUnknown(
                f"parapheur {operation}: no log for dossier {dossier_id}",
                operation=operation,
                detail="empty LogDossier",
            )
        return history

    async def get_dossier(self, dossier_id: str, into: Path) -> Dossier:
        """Fetch the dossier; its documents are decoded into a new folder under ``into``."""
        operation = "GetDossier"
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="dossier-", dir=into))
        answer = folder / "answer.xml"
        try:
            resp = await self._post(operation, soap.simple_request(operation, dossier_id))
            async with resp:
                if resp.status >= 300:
                    raw = await self._read_small(resp, operation)
                    self._check_http(resp, operation, raw)
                self._check_mtom(resp, operation)
                await self._save(resp, answer, operation)
            dossier = await asyncio.to_thread(soap.read_get_dossier, answer, folder)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
            raise
        await asyncio.to_thread(answer.unlink)
        return dossier

    async def _save(self, resp: aiohttp.ClientResponse, path: Path, operation: str) -> None:
        out = await asyncio.to_thread(_open_write, path)
        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                await asyncio.to_thread(out.write, chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transient_from(exc, self._what(operation)) from exc
        except OSError as exc:
            raise transient_from(exc, f"saving the {operation} answer") from exc
        finally:
            await asyncio.to_thread(out.close)

    async def archiver_dossier(self, dossier_id: str, action: str = "EFFACER") -> str | None:
        """Archive (or with ``EFFACER`` delete) a finished dossier; the archive URL if any."""
        operation = "ArchiverDossier"
        el = await self._small_call(operation, soap.archiver_request(dossier_id, action))
        soap.check_retour(operation, el)
        url = (soap.values(el, "URL") or [""])[0]
        return url or None

    async def effacer_dossier_rejete(self, dossier_id: str) -> MessageRetour | None:
        operation = "EffacerDossierRejete"
        el = await self._small_call(operation, soap.simple_request(operation, dossier_id))
        return soap.check_retour(operation, el)
