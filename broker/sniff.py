"""Recognise a file's type from its first bytes, never from its name."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

# The tar magic sits at offset 257, so the head must reach past it.
HEAD_BYTES = 512


class FileKind(StrEnum):
    PDF = "pdf"
    XML = "xml"
    JPEG = "jpeg"
    PNG = "png"
    ZIP = "zip"
    GZIP = "gzip"
    TAR = "tar"
    UNKNOWN = "unknown"

    @property
    def extension(self) -> str:
        """The extension used when the project names a file of this kind."""
        return _EXTENSIONS.get(self, "bin")

    @property
    def media_type(self) -> str | None:
        """The content type to declare for this kind (None when not recognised)."""
        return _MEDIA_TYPES.get(self)

    @property
    def label(self) -> str:
        return _LABELS.get(self, self.value)

    @property
    def described(self) -> str:
        """For sentences such as "the file is …"."""
        return "of no recognised type" if self is FileKind.UNKNOWN else self.label


_EXTENSIONS = {
    FileKind.PDF: "pdf",
    FileKind.XML: "xml",
    FileKind.JPEG: "jpg",
    FileKind.PNG: "png",
    FileKind.ZIP: "zip",
    FileKind.GZIP: "gz",
    FileKind.TAR: "tar",
}
_MEDIA_TYPES = {
    FileKind.PDF: "application/pdf",
    FileKind.XML: "application/xml",
    FileKind.JPEG: "image/jpeg",
    FileKind.PNG: "image/png",
    FileKind.ZIP: "application/zip",
    FileKind.GZIP: "application/gzip",
    FileKind.TAR: "application/x-tar",
}
_LABELS = {
    FileKind.PDF: "PDF",
    FileKind.XML: "XML",
    FileKind.JPEG: "JPEG",
    FileKind.PNG: "PNG",
    FileKind.ZIP: "ZIP",
    FileKind.GZIP: "gzip",
    FileKind.TAR: "tar",
    FileKind.UNKNOWN: "unrecognised content",
}

_MAGIC: tuple[tuple[bytes, FileKind], ...] = (
    (b"%PDF-", FileKind.PDF),
    (b"\xff\xd8\xff", FileKind.JPEG),
    (b"\x89PNG\r\n\x1a\n", FileKind.PNG),
    (b"PK\x03\x04", FileKind.ZIP),
    (b"PK\x05\x06", FileKind.ZIP),  # empty archive
    (b"PK\x07\x08", FileKind.ZIP),  # spanned archive
    (b"\x1f\x8b", FileKind.GZIP),
)
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def sniff(head: bytes) -> FileKind:
    """The kind of a file from its first bytes (``HEAD_BYTES`` of them when it has that many)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return FileKind.TAR
    if _looks_like_xml(head):
        return FileKind.XML
    return FileKind.UNKNOWN


def sniff_file(path: Path) -> FileKind:
    with path.open("rb") as stream:
        return sniff(stream.read(HEAD_BYTES))


def _looks_like_xml(head: bytes) -> bool:
    for bom in _BOMS:
        if head.startswith(bom):
            head = head[len(bom) :]
            # UTF-16: drop the NUL bytes so the markup reads like ASCII.
            head = head if bom == _BOMS[0] else head.replace(b"\x00", b"")
            break
    text = head.lstrip(b" \t\r\n")
    if text.startswith(b"<?xml"):
        return True
    # A document without declaration starts with an element, comment or processing instruction.
    return len(text) > 1 and text[:1] == b"<" and (text[1:2].isalpha() or text[1:2] in b"!_?")
