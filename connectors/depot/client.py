"""HTTP wire protocol of a depot inbox: one multipart POST per try.

The request carries one ``document`` part per file (streamed from disk unless small), and a
``metadata.json`` part; ``Idempotency-Key`` is the document id, so a peer that
already stored the document answers 409 instead of storing it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import aiohttp

from connectors.base import FileView, PermanentError, error_for_status, transient_from

# Files up to this size are sent from memory; larger ones stream from disk.
SMALL = 64 * 1024


@dataclass(frozen=True)
class DepotAnswer:
    status: int
    receipt: str | None
    replayed: bool  # the peer already had this key (409)


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:  # not JSON: the status says enough
        return None


def _receipt(body: Any) -> str | None:
    value = body.get("receipt") if isinstance(body, dict) else None
    return None if value is None else str(value)


@dataclass(frozen=True)
class DepotClient:
    http: aiohttp.ClientSession
    url: str
    token: str | None = None
    timeout: float = 30.0

    @property
    def what(self) -> str:
        return f"depot {self.url}"

    async def deliver(
        self, files: Sequence[FileView], manifest: Mapping[str, Any], key: str
    ) -> DepotAnswer:
        """One try: a fresh form with freshly opened files, so it can be called again."""
        handles: list[IO[bytes]] = []
        try:
            form = aiohttp.MultipartWriter("form-data")
            form.append(json.dumps(manifest, ensure_ascii=False).encode(),
                        {"Content-Type": "application/json"}).set_content_disposition(
                "form-data", name="metadata.json")
            # Small files are read in one go; larger ones are streamed from disk.
            small = await asyncio.to_thread(
                lambda: {i: v.path.read_bytes() for i, v in enumerate(files) if v.size <= SMALL})
            for i, view in enumerate(files):
                body: bytes | IO[bytes]
                if i in small:
                    body = small[i]
                else:
                    body = await asyncio.to_thread(view.path.open, "rb")
                    handles.append(body)
                part = form.append(body, {"Content-Type": view.content_type})
                part.set_content_disposition("form-data", name="document", filename=view.name)
            return await self._post(form, key)
        except OSError as exc:
            # Opening or reading a stored file failed: the blob store may be back later.
            raise transient_from(exc, self.what) from exc
        finally:
            for opened in handles:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(opened.close)

    async def _post(self, form: aiohttp.MultipartWriter, key: str) -> DepotAnswer:
        headers = {"Idempotency-Key": key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self.http.post(
                self.url,
                data=form,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,  # a redirected POST would not carry the files again
            ) as resp:
                if resp.status == 409:
                    return await self._conflict(resp, key)
                await error_for_status(resp, self.what)
                return DepotAnswer(resp.status, _receipt(await _json_or_none(resp)), False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transient_from(exc, self.what) from exc

    async def _conflict(self, resp: aiohttp.ClientResponse, key: str) -> DepotAnswer:
        """409: the peer already stored this key, unless it names another one."""
        body = await _json_or_none(resp)
        other = body.get("key") if isinstance(body, dict) else None
        if other is not None and other != key:
            raise PermanentError(f"{self.what}: HTTP 409 for key {other!r}, not {key!r}: {body}")
        return DepotAnswer(409, _receipt(body), True)
