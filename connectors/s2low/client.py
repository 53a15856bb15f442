"""The wire conventions of an S²LOW-style TdT, shared by its modules (ACTES, HELIOS).

HTTPS with a TLS client certificate (optionally plus HTTP Basic login). Answers of
the ``api=1`` scripts are text: a first line ``OK`` or ``KO``, then the payload or
the TdT's error message, in ISO-8859-1; the listing scripts answer JSON. ``KO`` and
HTTP errors become Permanent/TransientError quoting the TdT's words; nothing here
retries (connectors wrap calls in ``ctx.call``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import aiohttp

from connectors.base import (
    PermanentError,
    TransientError,
    error_for_status,
    secret_of,
    settings_of,
    transient_from,
)
from connectors.s2low.settings import TdtAccount

# KO messages of S²LOW that say the TdT itself failed, not the request.
_TRANSIENT_KO = (
    "Erreur d'initialisation du module",
    "Erreur lors de l'enregistrement",
    "Erreur de journalisation",
    "Erreur consultation statut",
)
_CHUNK = 256 * 1024
_MAX_ANSWER = 32 * 1024 * 1024


@dataclass(frozen=True)
class TdtSettings:
    url: str
    cert: Path
    key: Path
    ca: Path | None = None
    login: str | None = None
    password: str | None = None
    timeout: float = 60.0


def tdt_settings(config: Mapping[str, Any], entity: str | None) -> TdtSettings:
    """The entity's TdT endpoint and credentials, or a PermanentError naming what is wrong."""
    return wire_settings(settings_of(TdtAccount, config, entity, "tdt"), entity)


def wire_settings(account: TdtAccount, entity: str | None) -> TdtSettings:
    """What the client needs of an account already read (its secret read now)."""
    return TdtSettings(
        account.url.rstrip("/"),
        account.cert,
        account.key,
        account.ca,
        account.login or None,
        secret_of(account, "password", entity, "tdt") if account.login else None,
        account.timeout,
    )


@lru_cache(maxsize=32)
def _cached_context(
    cert: Path, key: Path, ca: Path | None, _stamps: tuple[float, ...]
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def ssl_context(settings: TdtSettings) -> ssl.SSLContext:
    """Client context: our certificate and key, the TdT's CA (system CAs without one).

    Cached per file set and modification time, so a renewed certificate is picked up.
    """
    files = [p for p in (settings.cert, settings.key, settings.ca) if p is not None]
    try:
        stamps = tuple(os.stat(p).st_mtime for p in files)
        return _cached_context(settings.cert, settings.key, settings.ca, stamps)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise PermanentError(
            f"TdT {settings.url}: cannot load the client certificate, key or CA "
            f"({', '.join(str(p) for p in files)}): {exc}"
        ) from exc


def decode_text(data: bytes) -> str:
    """The TdT's words: UTF-8 when they are, else ISO-8859-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


def excerpt(data: bytes, limit: int = 300) -> str:
    text = " ".join(decode_text(data).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def latin1(text: str) -> bytes:
    """``text`` as the ISO-8859-1 S²LOW expects; typographic characters become ASCII."""
    for wide, narrow in _TYPOGRAPHY.items():
        text = text.replace(wide, narrow)
    return text.encode("iso-8859-1", errors="replace")


_TYPOGRAPHY = {
    "\u2019": "'",
    "\u2018": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
    "\u0153": "oe",
    "\u0152": "OE",
    "\u20ac": "EUR",
    "\u202f": " ",
}


def tdt_file_name(name: str) -> str:
    """A name S²LOW takes as is: letters, digits and ``._-`` (it renames files anyway)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "fichier"


def form_field(form: aiohttp.MultipartWriter, name: str, value: str | bytes) -> None:
    data = value if isinstance(value, bytes) else value.encode("ascii", errors="replace")
    part = form.append(
        aiohttp.BytesPayload(data, content_type="text/plain; charset=ISO-8859-1"),
    )
    part.set_content_disposition("form-data", name=name)


def _tls_refusal(exc: BaseException) -> bool:
    """The server closed the TLS session with an alert about our certificate."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and "ALERT" in str(seen).upper():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class Attachment:
    """A file to post: where it is and the name the TdT sees."""

    path: Path
    name: str
    content_type: str = "application/pdf"


class OpenFiles:
    """Files opened for one form, closed when the request is over."""

    def __init__(self) -> None:
        self.handles: list[IO[bytes]] = []

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self.handles:
            handle.close()

    async def attach(self, form: aiohttp.MultipartWriter, name: str, file: Attachment) -> None:
        try:
            handle = await asyncio.to_thread(file.path.open, "rb")
        except OSError as exc:
            # The blob store may be back later.
            raise TransientError(f"cannot read {file.name} ({file.path}): {exc}") from exc
        self.handles.append(handle)
        part = form.append(handle, {"Content-Type": file.content_type})
        part.set_content_disposition("form-data", name=name, filename=file.name)


class S2lowClient:
    """One TdT account: a client certificate, optionally a login; its modules subclass it."""

    def __init__(self, http: aiohttp.ClientSession, settings: TdtSettings) -> None:
        self.http = http
        self.settings = settings
        self._ssl: ssl.SSLContext | None = None

    @property
    def what(self) -> str:
        return f"TdT {self.settings.url}"

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_context(self.settings)
        return self._ssl

    # -- transport ----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        script: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        data: aiohttp.MultipartWriter | None = None,
        sink: IO[bytes] | None = None,
    ) -> bytes:
        """One exchange; the body (or, with ``sink``, the body written there)."""
        headers = {}
        if self.settings.login is not None:
            login, password = self.settings.login, self.settings.password or ""
            headers["Authorization"] = aiohttp.encode_basic_auth(login, password)
        label = f"{self.what} {what}"
        try:
            async with self.http.request(
                method,
                f"{self.settings.url}{script}",
                params=params,
                data=data,
                headers=headers,
                ssl=self._context(),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                # Only GETs follow redirects: a redirected POST would not carry its files.
                allow_redirects=method == "GET",
            ) as resp:
                await error_for_status(resp, label)
                if sink is not None:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        await asyncio.to_thread(sink.write, chunk)
                    return b""
                body = await resp.content.read(_MAX_ANSWER + 1)
                if len(body) > _MAX_ANSWER:
                    raise PermanentError(f"{label}: answer larger than {_MAX_ANSWER} bytes")
                return body
        except (PermanentError, TransientError):
            raise
        except aiohttp.ClientSSLError as exc:
            raise PermanentError(
                f"{label}: TLS handshake refused ({exc}); check connectors.tdt.cert, key and ca"
            ) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            if _tls_refusal(exc):
                raise PermanentError(
                    f"{label}: the TdT refused our client certificate ({exc})"
                ) from exc
            raise transient_from(exc, label) from exc

    def _payload(self, body: bytes, what: str) -> list[bytes]:
        """The lines after ``OK``; ``KO`` raises with the TdT's message."""
        lines = body.lstrip(b"\xef\xbb\xbf \r\n\t").split(b"\n")
        head = lines[0].strip()
        label = f"{self.what} {what}"
        if head == b"OK":
            return lines[1:]
        if head == b"KO":
            message = " ".join(decode_text(b"\n".join(lines[1:])).split()) or "(no message)"
            error = TransientError if message.startswith(_TRANSIENT_KO) else PermanentError
            raise error(f"{label}: the TdT answered KO: {message}")
        raise PermanentError(f"{label}: unexpected answer: {excerpt(body) or '(empty)'}")

    def _transaction_id(self, lines: list[bytes], what: str) -> str:
        value = lines[0].strip() if lines else b""
        if not value.isdigit():
            raise PermanentError(f"{self.what} {what}: expected a transaction id, got {value!r}")
        return value.decode()

    async def _json(self, script: str, what: str, params: Mapping[str, str]) -> Any:
        body = await self._request("GET", script, what, params=params)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError):
            # A KO text instead of JSON: let it speak.
            self._payload(body, what)
            raise PermanentError(
                f"{self.what} {what}: expected JSON, got {excerpt(body)}"
            ) from None
