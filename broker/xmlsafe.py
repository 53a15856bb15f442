"""The one gate every XML document passes, and the only place that builds lxml parsers.

A document is judged on what it says once decoded, whatever its encoding:

1. its encoding is found from the byte order mark, else the first bytes, else the XML
   declaration (UTF-8 when there is none); a mark that contradicts the declaration, and
   any encoding the format does not allow, are refused, naming the encoding found;
2. the decoded text must hold no DOCTYPE (and so no entity), no XInclude and no
   stylesheet instruction: nothing that could reach a file or the network;
3. libxml2 then parses with that very encoding forced, with no entity resolution, no
   DTD, no network; ``huge_tree`` only together with a byte cap.

Every refusal is an :class:`XmlError` with the line where it was found, never an lxml
traceback. Schemas are compiled with the same hardening.
"""

from __future__ import annotations

import codecs
import io
import re
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lxml import etree

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
# What a document's prolog (declaration, comments, before the root element) may take.
MAX_PROLOG = 64 * 1024
UTF8_ONLY = ("UTF-8",)

# Byte order marks, longest first (UTF-32LE starts like UTF-16LE).
_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32BE"), (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\xef\xbb\xbf", "UTF-8"), (b"\xfe\xff", "UTF-16BE"), (b"\xff\xfe", "UTF-16LE"),
    (b"+/v8", "UTF-7"), (b"+/v9", "UTF-7"), (b"+/v+", "UTF-7"), (b"+/v/", "UTF-7"),
)
# Without a mark, how "<?" starts in encodings that are not ASCII-compatible.
_FIRST_BYTES = (
    (b"\x00\x00\x00<", "UTF-32BE"), (b"<\x00\x00\x00", "UTF-32LE"),
    (b"\x00<\x00?", "UTF-16BE"), (b"<\x00?\x00", "UTF-16LE"), (b"\x4c\x6f\xa7\x94", "EBCDIC"),
)
_CODECS = {"UTF-32BE": "utf-32-be", "UTF-32LE": "utf-32-le", "UTF-16BE": "utf-16-be",
           "UTF-16LE": "utf-16-le", "UTF-8": "utf-8", "UTF-7": "utf-7", "EBCDIC": "cp500"}
_DECLARATION = re.compile(
    r"<\?xml\s+version\s*=\s*([\"'])[^\"']*\1(?:\s+encoding\s*=\s*([\"'])([^\"']*)\2)?")
XINCLUDE = "http://www.w3.org/2001/XInclude"
_XINCLUDE_REFUSED = "XInclude not accepted: a document may not pull others in"
# Constructs that could make a parser reach outside the document, as decoded text.
_OUTSIDE = (
    (re.compile(r"<!DOCTYPE", re.IGNORECASE),
     "DOCTYPE declaration not accepted: a document here carries no DTD and no entities"),
    (re.compile(r"<!ENTITY", re.IGNORECASE),
     "ENTITY declaration not accepted: a document here carries no DTD and no entities"),
    (re.compile(re.escape(XINCLUDE)), _XINCLUDE_REFUSED),
    (re.compile(r"<\?xml-stylesheet", re.IGNORECASE),
     "xml-stylesheet instruction not accepted: a document may not point outside itself"),
)


class XmlError(ValueError):
    """Unreadable or refused XML, with the line where it went wrong when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class Encoding:
    """How a document is encoded: its XML name, the codec, the mark's length in bytes."""

    name: str
    codec: str
    bom: int = 0


def _canonical(name: str) -> tuple[str, str]:
    """(XML name as written by the formats, Python codec) of a declared encoding name."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise XmlError(f"unknown encoding {name!r} declared", 1) from None
    known = {"utf-8": "UTF-8", "iso8859-1": "ISO-8859-1", "utf-16": "UTF-16",
             "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE", "utf-32": "UTF-32",
             "utf-32-le": "UTF-32LE", "utf-32-be": "UTF-32BE", "utf-7": "UTF-7",
             "ascii": "US-ASCII"}
    return known.get(codec, name.upper()), codec


def _same_family(marked: str, declared_codec: str) -> bool:
    """A mark of UTF-16LE agrees with a declaration of UTF-16 or UTF-16LE, and so on."""
    codec = _CODECS[marked]
    return declared_codec == codec or declared_codec == codec.rsplit("-", 1)[0]


def encoding_of(head: bytes, allowed: Collection[str] = UTF8_ONLY) -> Encoding:
    """The encoding of a document starting with ``head``; XmlError when it is refused."""
    marked = next(((name, len(bom)) for bom, name in _BOMS if head.startswith(bom)), None)
    family = marked[0] if marked else next(
        (name for start, name in _FIRST_BYTES if head.startswith(start)), None)
    declared: tuple[str, str] | None = None
    if family != "UTF-7":  # its declaration cannot be trusted before decoding anyway
        text = head[marked[1] if marked else 0:].decode(
            _CODECS.get(family or "UTF-8", "utf-8"), errors="replace")
        if (found := _DECLARATION.match(text)) and found.group(3) is not None:
            declared = _canonical(found.group(3))
    if family and declared and not _same_family(family, declared[1]):
        said = "byte order mark" if marked else "first bytes"
        raise XmlError(f"the {said} say{'s' if marked else ''} {family} but the declaration "
                       f"says {declared[0]}", 1)
    if family is not None:
        how = "its byte order mark" if marked else "its first bytes"
        encoding = Encoding(family, _CODECS[family], marked[1] if marked else 0)
    elif declared is not None:
        how, encoding = "its declaration", Encoding(declared[0], declared[1])
    else:
        how, encoding = "default, no declaration", Encoding("UTF-8", "utf-8")
    if not any(_canonical(a)[1] == encoding.codec for a in allowed):
        raise XmlError(f"encoding {encoding.name} ({how}) is not accepted here: expected "
                       + " or ".join(allowed), 1)
    return encoding


def _decoded(data: bytes, encoding: Encoding) -> str:
    try:
        return data[encoding.bom:].decode(encoding.codec)
    except UnicodeDecodeError as exc:
        start = exc.start + encoding.bom
        line = data[:start].count(b"\n") + 1 if encoding.codec in ("utf-8", "iso8859-1") \
            else None
        raise XmlError(f"byte 0x{data[start]:02X} at offset {start} is not valid "
                       f"{encoding.name}", line) from None


def refuse_outside_reach(text: str) -> None:
    """XmlError naming the first construct of ``text`` that could reach outside, and where."""
    for pattern, what in _OUTSIDE:
        if found := pattern.search(text):
            raise XmlError(what, text.count("\n", 0, found.start()) + 1)


def parser(*, huge: bool = False, schema: etree.XMLSchema | None = None,
           encoding: str | None = None) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=huge, remove_comments=False, schema=schema, encoding=encoding,
    )


def _syntax_error(exc: etree.XMLSyntaxError, text: str) -> XmlError:
    """libxml2's complaint, said so that a person knows what to do."""
    # libxml2 appends where it was; the caller says that its own way.
    message = _AT.sub("", exc.msg or str(exc))
    line, column = exc.position
    last_line = text.count("\n") + 1
    # An error right at the end of the input: the document was cut short.
    if line == last_line and column > len(text[text.rfind("\n") + 1:]):
        return XmlError(f"the file ends before the document does (truncated?): {message}",
                        line)
    return XmlError(message, exc.lineno)


def parse_bytes(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                schema: etree.XMLSchema | None = None,
                encodings: Collection[str] = UTF8_ONLY) -> etree._Element:
    """The document's root, once it has passed the gate (see the module's doc)."""
    if len(data) > max_bytes:
        raise XmlError(f"document of {len(data)} bytes exceeds the {max_bytes} bytes allowed")
    if not data.strip():
        raise XmlError("empty file: no XML document in it")
    encoding = encoding_of(data[:256], encodings)
    text = _decoded(data, encoding)
    refuse_outside_reach(text)
    body = data[encoding.bom:] if encoding.bom else data
    try:
        root = etree.fromstring(body, parser(huge=len(data) > 10_000_000, schema=schema,
                                             encoding=encoding.name))
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(exc, text) from None
    except etree.LxmlError as exc:
        raise XmlError(f"the document cannot be read: {exc}") from None
    # The namespace may be spelled with character references the text check cannot see.
    for element in root.iter(f"{{{XINCLUDE}}}*"):
        line: int | None = element.sourceline  # type: ignore[assignment]
        raise XmlError(_XINCLUDE_REFUSED, line)
    return root


def parse_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
               schema: etree.XMLSchema | None = None,
               encodings: Collection[str] = UTF8_ONLY) -> etree._Element:
    size = path.stat().st_size
    if size > max_bytes:
        raise XmlError(f"{path.name}: {size} bytes exceeds the {max_bytes} bytes allowed")
    return parse_bytes(path.read_bytes(), max_bytes=max_bytes, schema=schema,
                       encodings=encodings)


def load_schema(path: Path) -> etree.XMLSchema:
    """Compile an XSD from disk (imports resolved relative to it, never from the network)."""
    doc = etree.parse(str(path), parser())
    return etree.XMLSchema(doc)


# A compiled schema keeps one error log for every thread that validates with it: two
# checks at once (a worker's steps run in threads) would read each other's, and a document
# the schema refuses could come back with no problem. Held from validate to the log read.
VALIDATING = threading.Lock()


def schema_problems(schema: etree.XMLSchema, root: etree._Element) -> list[str]:
    """Every schema violation as 'line N: message'."""
    with VALIDATING:
        try:
            if schema.validate(root):
                return []
        except etree.XMLSchemaValidateError as exc:
            return [f"line {root.sourceline or 1}: the document cannot be checked against "
                    f"the schema: {exc}"]
        said = [f"line {e.line}: {e.message}"
                for e in schema.error_log]  # type: ignore[attr-defined]
    return said or [f"line {root.sourceline or 1}: the schema refuses the document"]


def iter_elements(source: IO[bytes] | Path, tag: str | Sequence[str] | None = None,
                  max_bytes: int = 512 * 1024 * 1024,
                  encodings: Collection[str] = UTF8_ONLY,
                  events: tuple[str, ...] = ("end",),
                  schema: etree.XMLSchema | None = None) -> Elements:
    """Streaming parse for large files (memory stays flat); caller clears elements.

    The gate judges the prolog (everything before the root element, where a DTD would
    be); the body is parsed in the encoding found, with entities never resolved, and an
    XInclude namespace declared anywhere stops it. With ``schema``, libxml2 validates
    while it parses; a document that breaks only the schema ends in :class:`XmlInvalid`
    once read to its end.
    """
    stream: IO[bytes] = source.open("rb") if isinstance(source, Path) else source
    head = stream.read(4096)
    encoding = encoding_of(head[:256], encodings)
    head, root_line = _with_prolog(head, stream, encoding)
    stream = io.BufferedReader(_Capped(_Prefixed(head[encoding.bom:], stream),  # type: ignore[type-var]
                                       max_bytes))
    parsed = etree.iterparse(stream, events=(*events, "start-ns"), tag=tag,
                             resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=True, encoding=encoding.name, schema=schema)
    return Elements(parsed, root_line, validating=schema is not None)


class Elements:
    """A streamed document's ``(event, element)`` pairs, and its root once read."""

    def __init__(self, events: etree.iterparse, root_line: int, *,
                 validating: bool = False) -> None:
        self._events, self._root_line, self._validating = events, root_line, validating

    @property
    def root(self) -> etree._Element:
        root: etree._Element = self._events.root
        return root

    def __iter__(self) -> Iterator[tuple[str, etree._Element]]:
        # Namespaces come before their element's events: the line is the last one seen.
        last_line: int | None = self._root_line
        try:
            for event, value in self._events:
                if event == "start-ns":
                    if value[1] == XINCLUDE:
                        raise XmlError(_XINCLUDE_REFUSED, last_line)
                    continue
                last_line = value.sourceline
                yield event, value
        except etree.XMLSyntaxError as exc:
            message = _AT.sub("", exc.msg or str(exc))
            if self._validating:
                if exc.code in _SCHEMA_VALIDITY:  # type: ignore[attr-defined]
                    raise XmlInvalid(message) from None
                # Validating, lxml words libxml2's last error itself: "line N: b'…'".
                if found := _WORDED.fullmatch(message):
                    message = found.group(1).strip()
            raise XmlError(message, exc.lineno) from None


class XmlInvalid(XmlError):
    """A well-formed-so-far document that its schema refuses (libxml2 words the first
    refusal; a fault of form after it is not told apart)."""


_ROOT_START = re.compile(r"<[^?!]")
_AT = re.compile(r", line \d+, column \d+$")
_WORDED = re.compile(r"line \d+: b?'(.*)'", re.DOTALL)
# libxml2's codes of schema validity errors (XML_SCHEMAV_*).
_SCHEMA_VALIDITY = range(etree.ErrorTypes.SCHEMAV_NOROOT, etree.ErrorTypes.SCHEMAV_MISC + 1)


def _with_prolog(head: bytes, stream: IO[bytes], encoding: Encoding) -> tuple[bytes, int]:
    """``head`` read on until it holds the root element's start, its prolog judged; the
    line the root element starts on."""
    decoder = codecs.getincrementaldecoder(encoding.codec)(errors="strict")
    try:
        text = decoder.decode(head[encoding.bom:])
        while not _ROOT_START.search(text):
            if len(head) > MAX_PROLOG:
                raise XmlError(f"no root element in the first {MAX_PROLOG} bytes")
            more = stream.read(4096)
            if not more:
                break
            head += more
            text += decoder.decode(more)
    except UnicodeDecodeError as exc:
        raise XmlError(f"bytes near the start are not valid {encoding.name}: {exc.reason}",
                       1) from None
    if (root := _ROOT_START.search(text)) is not None:
        text = text[:root.start()]
    refuse_outside_reach(text)
    return head, text.count("\n") + 1


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
