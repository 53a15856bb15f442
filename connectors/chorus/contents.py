"""A PIVOT file's attachments taken out as it streams, the rest kept to be parsed.

A PIVOT invoice carries its attachments inline (``PJ/Contenu``, base64, often most of the
file's bytes). Parsing that whole with lxml would hold every attachment in memory, so the
bytes are read a chunk at a time: each ``Contenu``'s text is base64-decoded straight to
its own file, and what is left — the skeleton, with each ``Contenu`` emptied but its line
breaks kept so that lines still match the original — is small enough to be parsed and
checked against the schema. Only ASCII-compatible encodings reach this (the XML gate's
encoding check runs first), and a ``Contenu`` holding anything but base64 and white space
is refused where it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from connectors.base64stream import Base64Writer, NotBase64

_CHUNK = 1024 * 1024
_OPEN = re.compile(rb"<Contenu(?=[\s/>])")
_TAG_END = re.compile(rb"[<>]")
_CLOSE = re.compile(rb"</Contenu\s*>")
_LONGEST_TAG = 512


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ContentsError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        self.line = line
        super().__init__(message)


@dataclass(frozen=True)
class Content:
    """One ``Contenu``, decoded to ``path``; the n-th is the n-th ``Contenu`` of the file."""

    rank: int  # 1-based, in document order
    line: int
    path: Path
    size: int


@dataclass
class Split:
    skeleton: bytes
    contents: list[Content]


def _chunks(stream: Readable) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def split(stream: Readable, workdir: Path, *, max_skeleton: int, max_content: int,
          max_contents: int = 1000) -> Split:
    """The skeleton and every ``Contenu`` decoded under ``workdir`` (``pj-<rank>.bin``)."""
    skeleton = bytearray()
    contents: list[Content] = []
    line = 1
    buffer = b""
    decoder: Base64Writer | None = None
    out: IO[bytes] | None = None
    start = 0

    def keep(data: bytes) -> None:
        skeleton.extend(data)
        if len(skeleton) > max_skeleton:
            raise ContentsError(f"the invoice without its attachments exceeds the "
                                f"{max_skeleton} bytes allowed", line)

    try:
        for chunk in _chunks(stream):
            buffer += chunk
            while True:
                if decoder is None:
                    found = _OPEN.search(buffer)
                    if found is None:
                        # Keep a tail that may be the start of a tag cut by the chunk.
                        cut = max(0, len(buffer) - _LONGEST_TAG)
                        line += buffer.count(b"\n", 0, cut)
                        keep(buffer[:cut])
                        buffer = buffer[cut:]
                        break
                    end = _TAG_END.search(buffer, found.end())
                    if end is None:
                        if len(buffer) - found.start() > _LONGEST_TAG:
                            raise ContentsError("a Contenu tag that does not end", line)
                        break
                    if end.group() == b"<":
                        raise ContentsError("a Contenu tag that does not end", line)
                    tag_end = end.end()
                    empty = buffer[tag_end - 2:tag_end] == b"/>"
                    line += buffer.count(b"\n", 0, tag_end)
                    keep(buffer[:tag_end])
                    buffer = buffer[tag_end:]
                    if len(contents) >= max_contents:
                        raise ContentsError(f"more than {max_contents} attachments", line)
                    rank = len(contents) + 1
                    path = workdir / f"pj-{rank}.bin"
                    out = path.open("xb")
                    contents.append(Content(rank, line, path, 0))
                    if empty:  # <Contenu/>: nothing in it
                        out.close()
                        out = None
                        continue
                    decoder = Base64Writer(out, max_content)
                    start = line
                else:
                    lt = buffer.find(b"<")
                    text = buffer if lt < 0 else buffer[:lt]
                    try:
                        decoder.feed(text)
                    except NotBase64 as exc:
                        raise ContentsError(f"PJ/Contenu {exc}", line) from None
                    breaks = text.count(b"\n")
                    line += breaks
                    keep(b"\n" * breaks)  # lines after it stay where they were
                    buffer = b"" if lt < 0 else buffer[lt:]
                    if lt < 0:
                        break
                    closing = _CLOSE.match(buffer)
                    if closing is None:
                        if len(buffer) < _LONGEST_TAG and b">" not in buffer:
                            break  # the closing tag is cut by the chunk
                        raise ContentsError("PJ/Contenu holds markup: expected base64 text "
                                            "and then </Contenu>", line)
                    try:
                        decoder.finish()
                    except NotBase64 as exc:
                        raise ContentsError(f"PJ/Contenu {exc}", line) from None
                    assert out is not None
                    out.close()
                    contents[-1] = Content(contents[-1].rank, start, contents[-1].path,
                                           decoder.size)
                    decoder, out = None, None
                    keep(closing.group())
                    buffer = buffer[closing.end():]
        if decoder is not None:
            raise ContentsError("the file ends inside a PJ/Contenu (truncated?)", line)
        keep(buffer)
    finally:
        if out is not None:
            out.close()
    return Split(bytes(skeleton), contents)
