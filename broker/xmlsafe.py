"""The only place that builds lxml parsers: hardened, with byte caps.

No entity resolution, no DTD loading, no network, no XInclude; ``huge_tree``
only together with a byte cap. Schemas are compiled with the same hardening.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO

from lxml import etree

DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class XmlError(ValueError):
    """Unreadable or refused XML, with the line where it went wrong when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def parser(*, huge: bool = False, schema: etree.XMLSchema | None = None) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=huge, remove_comments=False, schema=schema,
    )


def _refuse_doctype(data: bytes) -> None:
    # An internal DTD can declare entities (billion laughs); no ACTES/PES/SEDA message has one.
    if b"<!DOCTYPE" in data[:4096] or b"<!ENTITY" in data:
        raise XmlError("DOCTYPE/ENTITY declarations are not accepted")


def parse_bytes(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                schema: etree.XMLSchema | None = None) -> etree._Element:
    if len(data) > max_bytes:
        raise XmlError(f"document of {len(data)} bytes exceeds the {max_bytes} bytes allowed")
    _refuse_doctype(data)
    try:
        return etree.fromstring(data, parser(huge=len(data) > 10_000_000, schema=schema))
    except etree.XMLSyntaxError as exc:
        raise XmlError(exc.msg, exc.lineno) from exc


def parse_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
               schema: etree.XMLSchema | None = None) -> etree._Element:
    size = path.stat().st_size
    if size > max_bytes:
        raise XmlError(f"{path.name}: {size} bytes exceeds the {max_bytes} bytes allowed")
    return parse_bytes(path.read_bytes(), max_bytes=max_bytes, schema=schema)


def load_schema(path: Path) -> etree.XMLSchema:
    """Compile an XSD from disk (imports resolved relative to it, never from the network)."""
    doc = etree.parse(str(path), parser())
    return etree.XMLSchema(doc)


def schema_problems(schema: etree.XMLSchema, root: etree._Element) -> list[str]:
    """Every schema violation as 'line N: message'."""
    if schema.validate(root):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]  # type: ignore[attr-defined]


def iter_elements(source: IO[bytes] | Path, tag: str | None = None,
                  max_bytes: int = 512 * 1024 * 1024) -> etree.iterparse:
    """Streaming parse for large files (memory stays flat); caller clears elements."""
    stream: IO[bytes] = source.open("rb") if isinstance(source, Path) else source
    head = stream.read(4096)
    _refuse_doctype(head)
    stream = io.BufferedReader(_Capped(_Prefixed(head, stream), max_bytes))  # type: ignore[type-var]
    return etree.iterparse(stream, events=("end",), tag=tag, resolve_entities=False,
                           no_network=True, load_dtd=False, huge_tree=True)


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Capped(io.RawIOBase):
    def __init__(self, raw: io.RawIOBase, cap: int) -> None:
        self.raw, self.cap, self.seen = raw, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = self.raw.readinto(buffer) or 0
        self.seen += n
        if self.seen > self.cap:
            raise XmlError(f"document exceeds the {self.cap} bytes allowed")
        return n
