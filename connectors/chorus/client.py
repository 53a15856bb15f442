"""Chorus Pro's recipient API, as PISTE serves it.

Two layers on every call: a PISTE OAuth2 token (client credentials, ``Authorization:
<token_type> <access_token>``) and the ``cpro-account`` header (base64 of the technical
account's ``login:password``). Every operation is a ``POST`` of JSON to
``<base>/cpro/<domain>/v1/<operation>``.

* Tokens are kept per application for ``expires_in`` less a margin, refreshed before
  they expire, and again when the API answers 401; one refresh at a time per
  application, whatever the number of callers (``TokenCache``).
* Answers carry ``codeRetour``: 0 is success, 20000 (search) and 20007 (works search)
  mean no result, 20002 a status change Chorus Pro finds inconsistent; any other code,
  or a ``retourFonctionnel``, is a functional error said with its label. Errors come as
  HTTP 400 with that JSON; 429, 408 and 5xx are transient (with the peer's
  Retry-After), to be retried with back-off by the caller.
* ``telecharger/groupe`` answers its file as one base64 string in JSON: it is decoded to
  disk as it arrives, never held whole. Over the 120 MB a call may take, Chorus Pro says
  413 and the group is split in two until each part fits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import aiohttp

from connectors.base import (
    PermanentError,
    TransientError,
    error_for_status,
    secret_of,
    settings_of,
    transient_from,
)
from connectors.base64stream import Base64Writer, NotBase64
from connectors.chorus.models import (
    History,
    InvoiceSummary,
    ProcessAnswer,
    SearchPage,
    Structure,
    loads,
)
from connectors.chorus.settings import ChorusSettings
from connectors.chorus.statuses import Change
from connectors.safezip import Unpacked, ZipRefused, unpack

KEY = "chorus"
OK = 0
NO_RESULT = frozenset({20000, 20007})
STATUS_INCONSISTENT = 20002
MAX_DOWNLOAD = 120 * 1024 * 1024
_READ = 256 * 1024
_SMALL = 1024 * 1024  # what an answer may hold besides a downloaded file


class NoResult(Exception):
    """``codeRetour`` 20000/20007: the search found nothing."""


class Refused(PermanentError):
    """Chorus Pro answered, and said no: a ``codeRetour`` or a functional error."""


class StatusInconsistent(Refused):
    """``codeRetour`` 20002: Chorus Pro refuses the status change from the current one."""


class MaybeApplied(TransientError):
    """A change lost after it was sent (timeout, 5xx): Chorus Pro may have made it."""

    retry_in_call = False


def int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


class TooLarge(PermanentError):
    """HTTP 413: the download asked for is over what one call may take."""


@dataclass(frozen=True)
class Application:
    """A PISTE application: who asks for tokens."""

    token_url: str
    client_id: str
    client_secret: str


@dataclass
class _Token:
    header: str
    expires: float


@dataclass
class TokenCache:
    """Tokens per application, refreshed before expiry and on 401, one refresh at a time."""

    clock: Callable[[], float] = time.monotonic
    # Refresh this share of the lifetime before it ends (at most a minute early).
    early: float = 0.1
    fetched: Counter[str] = field(default_factory=Counter)
    _tokens: dict[tuple[str, str], _Token] = field(default_factory=dict)
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    async def header(self, http: aiohttp.ClientSession, app: Application,
                     seconds: float) -> str:
        key = (app.token_url, app.client_id)
        token = self._tokens.get(key)
        if token is not None and token.expires > self.clock():
            return token.header
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)  # another caller may have refreshed it meanwhile
            if token is not None and token.expires > self.clock():
                return token.header
            header, lifetime = await _fetch_token(http, app, seconds)
            self.fetched[app.client_id] += 1
            margin = min(60.0, lifetime * self.early)
            self._tokens[key] = _Token(header, self.clock() + lifetime - margin)
            return header

    def refused(self, app: Application, header: str) -> None:
        """The API refused ``header``: forget it (unless a newer one replaced it)."""
        key = (app.token_url, app.client_id)
        token = self._tokens.get(key)
        if token is not None and token.header == header:
            del self._tokens[key]


TOKENS = TokenCache()


async def _fetch_token(http: aiohttp.ClientSession, app: Application,
                       seconds: float) -> tuple[str, float]:
    what = f"PISTE token {app.token_url}"
    form = {"grant_type": "client_credentials", "client_id": app.client_id,
            "client_secret": app.client_secret, "scope": "openid"}
    try:
        async with http.post(app.token_url, data=form, allow_redirects=False,
                             headers={"Accept": "application/json"},
                             timeout=aiohttp.ClientTimeout(total=seconds)) as resp:
            if resp.status in (400, 401):
                body = (await resp.text(errors="replace"))[:300]
                raise PermanentError(f"{what}: the application {app.client_id!r} is refused "
                                     f"(HTTP {resp.status}): {body}")
            await error_for_status(resp, what)
            answer = loads(await resp.text())
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise transient_from(exc, what) from exc
    if not isinstance(answer, dict):
        raise PermanentError(f"{what}: the answer is not a JSON object")
    token, kind, lifetime = (answer.get("access_token"), answer.get("token_type"),
                             answer.get("expires_in"))
    if not isinstance(token, str) or not token or isinstance(lifetime, bool) \
            or not isinstance(lifetime, int | float | Decimal) or lifetime <= 0:
        raise PermanentError(f"{what}: the answer lacks access_token or a positive "
                             f"expires_in: {sorted(answer)}")
    return f"{kind or 'Bearer'} {token}", float(lifetime)


def _coded(body: Any, what: str, status: int = 200) -> dict[str, Any]:
    """``body`` when its ``codeRetour`` says success; the right error otherwise."""
    if not isinstance(body, dict):
        raise PermanentError(f"{what}: the answer is not a JSON object")
    functional = body.get("retourFonctionnel")
    if isinstance(functional, dict):
        raise Refused(f"{what}: {functional.get('codeRetourFonctionnel')} "
                             f"{functional.get('libelleRetourFonctionnel')}")
    if status == 400 and int_or_none(body.get("codeRetour")) in (None, OK):
        # A gateway's refusal ({"error": ...}), not an empty Chorus Pro answer.
        raise PermanentError(f"{what}: HTTP {status}: {json.dumps(body)[:500]}")
    code = body.get("codeRetour", OK)
    try:
        code = int(code)
    except (TypeError, ValueError):
        raise PermanentError(f"{what}: codeRetour {code!r} is not a number") from None
    if code == OK:
        return body
    if code in NO_RESULT:
        raise NoResult(body.get("libelle"))
    label = body.get("libelle") or ""
    if code == STATUS_INCONSISTENT:
        raise StatusInconsistent(f"{what}: codeRetour {code}: {label}")
    raise Refused(f"{what}: codeRetour {code}: {label}")


def _second_of(text: str | None, like: datetime) -> datetime | None:
    """``text`` as a moment to search from (whole seconds), or None when it cannot be
    compared with ``like``."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if (moment.tzinfo is None) != (like.tzinfo is None):
        return None
    return moment.replace(microsecond=0)


class ChorusClient:
    def __init__(self, http: aiohttp.ClientSession, settings: ChorusSettings,
                 entity: str | None = None, tokens: TokenCache = TOKENS) -> None:
        self.http = http
        self.settings = settings
        self.tokens = tokens
        self.app = Application(settings.token_url, settings.client_id,
                               secret_of(settings, "client_secret", entity, KEY) or "")
        password = secret_of(settings, "password", entity, KEY) or ""
        self.account = base64.b64encode(f"{settings.login}:{password}".encode()).decode()
        self.timeout = settings.timeout

    @classmethod
    def of(cls, http: aiohttp.ClientSession, config: Any, entity: str | None) -> ChorusClient:
        return cls(http, settings_of(ChorusSettings, config, entity, KEY), entity)

    # -- transport ---------------------------------------------------------------------

    async def _post(self, operation: str, body: dict[str, Any],
                    read: Callable[[aiohttp.ClientResponse, str], Any] | None = None, *,
                    idempotent: bool = True) -> Any:
        """POST ``body`` to ``operation``; the JSON answer checked (``read`` reads it
        instead, for downloads). A 401 gets one new token and one more try. A call that
        changes something (``idempotent=False``) and is lost after it was sent (timeout,
        5xx) raises MaybeApplied: the caller must look before asking again."""
        what = f"Chorus Pro {operation}"
        url = f"{self.settings.base_url}/cpro/{operation}"
        for attempt in (1, 2):
            header = await self.tokens.header(self.http, self.app, self.timeout)
            status = 0
            try:
                async with self.http.post(
                    url, json=body, allow_redirects=False,
                    headers={"Authorization": header, "cpro-account": self.account,
                             "Accept": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    status = resp.status
                    if status == 401:
                        self.tokens.refused(self.app, header)
                        if attempt == 1:
                            continue
                        raise PermanentError(f"{what}: a new PISTE token is refused too "
                                             f"(HTTP 401)")
                    if status == 413:
                        raise TooLarge(f"{what}: HTTP 413, over what one call may take")
                    if status >= 500 and not idempotent:
                        raise MaybeApplied(f"{what}: HTTP {status}; the change may have "
                                           f"been made")
                    if status in (200, 400):
                        if read is not None and status == 200:
                            return _coded(await read(resp, what), what, status)
                        return _coded(loads(await _small_text(resp, what)), what, status)
                    await error_for_status(resp, what)
                    return _coded(loads(await _small_text(resp, what)), what, status)
            except aiohttp.ClientConnectorError as exc:  # never sent: safe to ask again
                raise transient_from(exc, what) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                if not idempotent:
                    raise MaybeApplied(f"{transient_from(exc, what)}; the change may have "
                                       f"been made") from exc
                raise transient_from(exc, what) from exc
            except json.JSONDecodeError as exc:
                if status == 200:  # a gateway's maintenance page, not Chorus Pro's answer
                    lost = MaybeApplied if not idempotent else TransientError
                    raise lost(f"{what}: the answer is not JSON: {exc}") from exc
                raise PermanentError(f"{what}: the answer is not JSON: {exc}") from exc
        raise AssertionError("unreachable")

    # -- operations --------------------------------------------------------------------

    async def health(self) -> str:
        body = await self._post("transverses/v1/health-check", {})
        return str(body.get("libelle") or "ok")

    async def structure(self, siret: str) -> Structure:
        """The structure known by ``siret`` (its ``idStructureCPP``)."""
        try:
            body = await self._post("structures/v1/rechercher", {
                "structure": {"identifiantStructure": siret,
                              "typeIdentifiantStructure": "SIRET"},
                "restreindreStructuresPrivees": False})
        except NoResult:
            body = {}
        found = [Structure.model_validate(s) for s in body.get("listeStructures") or ()]
        if not found:
            raise PermanentError(f"Chorus Pro knows no structure with SIRET {siret}")
        return found[0]

    async def search_received(self, recipient: int, since: datetime, until: datetime, *,
                              kind: Literal["FACTURE", "FACTURE_TRAVAUX"] = "FACTURE",
                              page_size: int = 1000) -> AsyncIterator[InvoiceSummary]:
        """Invoices for ``recipient`` whose status changed in [since, until], every page.

        Pages go by date rather than by number: an invoice whose status changes while the
        pages are read leaves its place, and by number the row after it would be skipped
        for good. Each next search starts at the last row's second (that second read
        again, rows already given not given twice); by number only while a whole page
        shares one second or the dates cannot be read.
        """
        start, page = since, 1
        given: set[tuple[int, str, str | None]] = set()
        while True:
            try:
                body = await self._post("factures/v1/rechercher/recipiendaire", {
                    "typeDemandePaiement": kind, "idDestinataire": recipient,
                    "periodeDateHeureEtatCourantDu": start.isoformat(timespec="seconds"),
                    "periodeDateHeureEtatCourantAu": until.isoformat(timespec="seconds"),
                    "paramRecherche": {"pageResultatDemandee": page,
                                       "nbResultatsParPage": page_size,
                                       "triColonne": "DateHeureEtatCourant",
                                       "triSens": "Ascendant"}})
            except NoResult:
                return
            found = SearchPage.model_validate(body)
            for summary in found.listeFactures:
                key = (summary.idFacture, summary.statut, summary.dateHeureEtatCourant)
                if key not in given:
                    given.add(key)
                    yield summary
            # Our own count, not the answer's pageCourante: a peer echoing one page
            # number would otherwise be asked forever.
            if not found.listeFactures or not found.pages or page >= found.pages:
                return
            first = _second_of(found.listeFactures[0].dateHeureEtatCourant, start)
            last = _second_of(found.listeFactures[-1].dateHeureEtatCourant, start)
            # Only forward: a peer that ignores the date would give this page again.
            if first is not None and last is not None and last > first and last > start:
                start, page = last, 1
            else:
                page += 1

    async def consult(self, invoice: int) -> dict[str, Any]:
        body = await self._post("factures/v1/consulter/recipiendaire", {
            "identifiantFactureCPP": invoice, "rechercheLignePoste": "OUI",
            "recherchePj": "OUI"})
        found = body.get("facture")
        return found if isinstance(found, dict) else body

    async def history(self, invoice: int, most: int = 100) -> History:
        body = await self._post("factures/v1/consulter/historique",
                                {"idFacture": invoice, "nbResultatsMaximum": most})
        return History.model_validate(body)

    async def next_statuses(self, current: str) -> list[str]:
        """What Chorus Pro says the recipient may set from ``current``."""
        body = await self._post("transverses/v1/recuperer/etats/traitement",
                                {"statutCourant": current})
        listed = body.get("listeStatutsPossiblesPourTraitement") or ()
        return [str(s.get("statutPossiblePourTraitement")) for s in listed
                if isinstance(s, dict)]

    async def process(self, invoice: int, change: Change) -> ProcessAnswer:
        body: dict[str, Any] = {"idFacture": invoice, "nouveauStatut": change.status}
        if change.motif is not None:
            body["motif"] = change.motif
        if change.numero_dp_mandat is not None:
            body["numeroDPMandat"] = change.numero_dp_mandat
        return ProcessAnswer.model_validate(
            await self._post("factures/v1/traiter/recue", body, idempotent=False))

    async def download(self, invoices: Sequence[int], into: Path, *,
                       fmt: Literal["PIVOT", "PDF"] = "PIVOT",
                       attachments: bool = True) -> list[Unpacked]:
        """The files of ``invoices`` unpacked into ``into``; groups Chorus Pro finds too
        large are split until each fits (one invoice too large is an error)."""
        await asyncio.to_thread(into.mkdir, parents=True, exist_ok=True)
        groups = [list(invoices)]
        files: list[Unpacked] = []
        part = 0
        while groups:
            group = groups.pop(0)
            part += 1
            archive = into / f"groupe-{part}.zip"
            try:
                await self._download_one(group, archive, fmt, attachments)
            except TooLarge:
                if len(group) == 1:
                    raise TooLarge(f"Chorus Pro telecharger/groupe: invoice {group[0]} alone "
                                   f"is over what a download may take") from None
                half = len(group) // 2
                groups[:0] = [group[:half], group[half:]]
                continue
            try:
                files += await asyncio.to_thread(unpack, archive, into / f"groupe-{part}")
            except ZipRefused as exc:
                raise PermanentError(f"Chorus Pro telecharger/groupe: the file is refused: "
                                     f"{exc}") from exc
            finally:
                archive.unlink(missing_ok=True)
        return files

    async def _download_one(self, group: list[int], archive: Path, fmt: str,
                            attachments: bool) -> None:
        async def read(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
            return await read_download(resp.content.iter_chunked(_READ), archive, what)

        await self._post("factures/v1/telecharger/groupe", {
            "listeFacture": [{"idFacture": i} for i in group], "format": fmt,
            "avecPiecesJointesComplementaires": "OUI" if attachments else "NON"}, read)


async def _small_text(resp: aiohttp.ClientResponse, what: str) -> str:
    data = bytearray()
    async for chunk in resp.content.iter_chunked(_READ):
        data += chunk
        if len(data) > _SMALL:
            raise PermanentError(f"{what}: an answer over {_SMALL} bytes")
    return data.decode("utf-8", errors="replace")


_FILE_KEY = re.compile(rb'"fichierResultat"\s*:\s*"')


async def read_download(chunks: AsyncIterator[bytes], archive: Path,
                        what: str) -> dict[str, Any]:
    """The answer's JSON without its ``fichierResultat``, which is decoded to ``archive``."""
    head = bytearray()
    tail = bytearray()
    out = await asyncio.to_thread(archive.open, "wb")
    writer = Base64Writer(out, MAX_DOWNLOAD)
    state = "head"
    pending = b""
    try:
        async for chunk in chunks:
            if state == "head":
                head += chunk
                found = _FILE_KEY.search(head)
                if found is None:
                    if len(head) > _SMALL:
                        raise PermanentError(f"{what}: no fichierResultat in the answer")
                    continue
                chunk, head = bytes(head[found.end():]), head[:found.end()]
                state = "file"
            if state == "file":
                chunk = pending + chunk
                end = chunk.find(b'"')
                text = chunk if end < 0 else chunk[:end]
                # An escape cut by the chunk waits for its second half.
                pending = b"\\" if end < 0 and text.endswith(b"\\") else b""
                text = text[:-1] if pending else text
                # JSON may escape the slashes and carry the encoder's line breaks.
                writer.feed(text.replace(b"\\/", b"/").replace(b"\\r", b"")
                            .replace(b"\\n", b""))
                if end < 0:
                    continue
                writer.finish()
                state = "tail"
                chunk = chunk[end:]
            tail += chunk
            if len(tail) > _SMALL:
                raise PermanentError(f"{what}: an answer over {_SMALL} bytes after its file")
    except NotBase64 as exc:
        raise PermanentError(f"{what}: fichierResultat {exc}") from None
    finally:
        await asyncio.to_thread(out.close)
    if state == "head":
        return dict(loads(head.decode("utf-8", errors="replace")))
    if state == "file":
        raise TransientError(f"{what}: the answer ended inside fichierResultat")
    body = loads((bytes(head) + bytes(tail)).decode("utf-8", errors="replace"))
    if not isinstance(body, dict):
        raise PermanentError(f"{what}: the answer is not a JSON object")
    body["fichierResultat"] = str(archive)
    return body
