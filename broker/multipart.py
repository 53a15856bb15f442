"""Streaming reader of ``multipart/form-data`` bodies, on python-multipart's parser.

Parts come one at a time and their data in chunks as the body arrives, so a
150 MB file part never sits in memory. Any framing error raises ValueError.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

# Bytes of headers one part may carry: names and types, not data.
MAX_PART_HEADERS = 16 * 1024
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_EXTENDED_FILENAME = re.compile(r"filename\*\s*=\s*([\w-]+)'[^']*'([^;\s]+)", re.IGNORECASE)


class ByteStream(Protocol):
    async def readany(self) -> bytes: ...


@dataclass
class Part:
    """One part's headers; its data is read with ``MultipartReader.read_chunk``."""

    name: str | None
    filename: str | None
    content_type: str | None
    headers: dict[str, str] = field(default_factory=dict)


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not kind.startswith(b"multipart/") or not boundary:
        raise ValueError(f"not a multipart body with a boundary: {content_type!r}")
    return boundary


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _unescaped(name: str) -> str:
    """A plain file name some clients percent-encode (aiohttp: ``d%C3%A9lib.pdf``) decoded;
    one that does not decode to UTF-8 (``remise 10%.pdf``) is kept as sent."""
    if not _PERCENT_ESCAPE.search(name):
        return name
    try:
        return unquote(name, errors="strict")
    except UnicodeDecodeError:
        return name


def _part(headers: dict[str, str], disposition: bytes) -> Part:
    """The part's name and file name, from the raw bytes of its Content-Disposition.

    RFC 7578: a file name comes as raw UTF-8 (what browsers send); ``filename*``
    (RFC 5987, ``UTF-8''d%C3%A9lib.pdf``), when given, is preferred.
    """
    kind, params = parse_options_header(disposition)
    if kind != b"form-data":
        raise ValueError(f"part without Content-Disposition: form-data ({_text(disposition)!r})")
    name = params.get(b"name")
    filename: str | None = None
    if extended := _EXTENDED_FILENAME.search(_text(disposition)):
        try:
            filename = unquote(extended.group(2), encoding=extended.group(1),
                               errors="strict")
        except (LookupError, UnicodeDecodeError) as exc:
            raise ValueError(f"filename* is not valid {extended.group(1)}: {exc}") from exc
    elif b"filename" in params:
        filename = _unescaped(_text(params[b"filename"]))
    return Part(_text(name) if name is not None else None, filename,
                headers.get("content-type"), headers)


class MultipartReader:
    """``await next_part()`` until None; ``await read_chunk()`` until b"" for each part."""

    def __init__(self, stream: ByteStream, content_type: str) -> None:
        self._stream = stream
        self._events: deque[tuple[str, Any]] = deque()
        self._header = [bytearray(), bytearray()]
        self._headers: dict[str, str] = {}
        self._disposition = b""
        self._header_bytes = 0
        self._in_part = False
        self._finished = False
        self._parser = MultipartParser(boundary_of(content_type), {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": lambda: self._events.append(("end", None)),
            "on_end": lambda: self._events.append(("done", None)),
        })

    # --- parser callbacks (synchronous, while a chunk is written) ---

    def _begin(self) -> None:
        self._headers, self._disposition, self._header_bytes = {}, b"", 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._grow(end - start)
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._grow(end - start)
        self._header[1] += data[start:end]

    def _grow(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADERS:
            raise ValueError(f"part headers larger than {MAX_PART_HEADERS} bytes")

    def _header_end(self) -> None:
        name, value = (bytes(b) for b in self._header)
        key = name.decode("latin-1").strip().lower()
        self._headers[key] = _text(value).strip()
        if key == "content-disposition":
            # Parsed as bytes: a UTF-8 file name is not Latin-1 text.
            self._disposition = value.strip()
        self._header = [bytearray(), bytearray()]

    def _headers_finished(self) -> None:
        self._events.append(("part", _part(self._headers, self._disposition)))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", data[start:end]))

    # --- reading ---

    async def _event(self) -> tuple[str, Any]:
        while not self._events:
            if self._finished:
                raise ValueError("multipart body ends before its closing boundary")
            chunk = await self._stream.readany()
            try:
                if chunk:
                    self._parser.write(chunk)
                else:
                    self._finished = True
                    self._parser.finalize()
            except MultipartParseError as exc:
                raise ValueError(str(exc)) from exc
        return self._events.popleft()

    async def next_part(self) -> Part | None:
        """The next part, skipping what is left of the current one; None after the last."""
        while True:
            kind, value = await self._event()
            if kind == "part":
                self._in_part = True
                part: Part = value
                return part
            if kind == "done":
                self._events.appendleft((kind, value))
                return None

    async def read_chunk(self) -> bytes:
        """The next piece of the current part's data; b"" at its end."""
        if not self._in_part:
            return b""
        kind, value = await self._event()
        if kind == "data":
            data: bytes = value
            return data
        if kind != "end":
            raise ValueError("multipart part ends without its boundary")
        self._in_part = False
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_chunk():
            yield chunk
