"""Base64 decoded as it arrives, strictly, straight to a file.

Peers send files as base64 text inside XML (a PIVOT's attachments) or JSON (a Chorus Pro
download): decoding a block at a time keeps memory flat however large the file. White
space may separate the text; anything else outside the alphabet, padding before the end,
or a length that is not a multiple of four is refused, saying which.
"""

from __future__ import annotations

import binascii
from typing import IO

# bytes.translate deletes at memory speed; a regular expression costs several times more.
_SPACE = b" \t\n\r\x0b\x0c"
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class NotBase64(ValueError):
    """What is wrong with the text (the caller says where)."""


class Base64Writer:
    def __init__(self, out: IO[bytes], cap: int) -> None:
        self.out = out
        self.cap = cap
        self.size = 0
        self._rest = b""
        self._padded = False

    def feed(self, text: bytes) -> None:
        stripped = text.translate(None, _SPACE)
        if bad := stripped.translate(None, _ALPHABET):
            shown = bad[:1].decode("latin-1")
            raise NotBase64(f"is not base64: {shown!r} found (base64 text only)")
        data = self._rest + stripped if self._rest else stripped
        usable = len(data) - len(data) % 4
        self._rest = data[usable:]
        if usable:
            self._write(data[:usable])

    def _write(self, block: bytes) -> None:
        if self._padded:
            raise NotBase64("is not base64: text after its '=' padding")
        try:
            decoded = binascii.a2b_base64(block, strict_mode=True)
        except binascii.Error as exc:
            raise NotBase64(f"is not base64: {exc}") from None
        self._padded = block.endswith(b"=")
        self.size += len(decoded)
        if self.size > self.cap:
            raise NotBase64(f"decodes past the {self.cap} bytes it may take")
        self.out.write(decoded)

    def finish(self) -> None:
        if self._rest:
            raise NotBase64(f"is not base64: its length is not a multiple of 4 "
                            f"({len(self._rest)} character(s) left over)")
