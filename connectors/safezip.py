"""ZIP archives from peers, unpacked without trusting them.

Chorus Pro wraps every attachment of a PIVOT invoice in a ZIP, and its group downloads
are ZIPs. What an archive says of itself (sizes, names, kinds) is checked before a byte
is written, and the bytes are counted again as they are inflated: a member that inflates
past what it declared, or past the limits, stops the unpacking (compression bomb). Names
are plain file names — no folder, no absolute path, no ``..``, no drive, no control
character — and each is written once; links, encrypted members and nested folders are
refused. Memory stays bounded: members are inflated a chunk at a time to disk.
"""

from __future__ import annotations

import hashlib
import stat
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 256 * 1024
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP = b"PK\x05\x06"


@dataclass(frozen=True)
class ZipLimits:
    members: int = 100
    member_bytes: int = 150 * 1024 * 1024
    total_bytes: int = 300 * 1024 * 1024
    # Inflated / compressed beyond this, for members larger than ``ratio_from``: a bomb.
    ratio: int = 200
    ratio_from: int = 1024 * 1024


class ZipRefused(ValueError):
    """Why the archive is not unpacked; nothing of it is left on disk."""


@dataclass(frozen=True)
class Unpacked:
    name: str
    path: Path
    size: int
    sha256: str


def is_zip(head: bytes) -> bool:
    return head.startswith((ZIP_MAGIC, EMPTY_ZIP))


def name_problem(name: str) -> str | None:
    """Why ``name`` may not be written as a file name, or None."""
    if not name or name.strip() in ("", ".", ".."):
        return "has no file name"
    if "/" in name or "\\" in name:
        return "is a path, not a file name"
    if len(name.encode("utf-8")) > 255:
        return "is longer than 255 bytes"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return "holds a control character"
    if len(name) > 1 and name[1] == ":":
        return "names a drive"
    return None


def _member_problem(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    if info.flag_bits & 0x1:
        return "is encrypted"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if info.is_dir():
        return "is a folder"
    said = name_problem(info.filename)
    if said:
        return said
    if info.file_size > limits.member_bytes:
        return f"declares {info.file_size} bytes, over the {limits.member_bytes} allowed"
    if (info.file_size > limits.ratio_from
            and info.file_size > limits.ratio * max(info.compress_size, 1)):
        return (f"inflates {info.file_size} bytes from {info.compress_size}: a compression "
                f"bomb (more than {limits.ratio} to 1)")
    return None


def unpack(archive: Path, into: Path, limits: ZipLimits = ZipLimits()) -> list[Unpacked]:
    """Every member of ``archive`` written into ``into`` (made here); ZipRefused naming the
    member and the reason, with ``into`` left empty."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_listing(infos, limits)
            into.mkdir(parents=True, exist_ok=True)
            written: list[Unpacked] = []
            try:
                total = 0
                for info in infos:
                    member = _inflate(zf, info, into / info.filename, limits,
                                      limits.total_bytes - total)
                    total += member.size
                    written.append(member)
            except BaseException:
                for done in written:
                    done.path.unlink(missing_ok=True)
                raise
            return written
    except zipfile.BadZipFile as exc:
        raise ZipRefused(f"not a readable ZIP archive: {exc}") from None
    except (NotImplementedError, RuntimeError) as exc:  # unknown method, encryption
        raise ZipRefused(f"cannot be unpacked: {exc}") from None


def _check_listing(infos: Sequence[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(infos) > limits.members:
        raise ZipRefused(f"holds {len(infos)} members, over the {limits.members} allowed")
    seen: set[str] = set()
    declared = 0
    for info in infos:
        said = _member_problem(info, limits)
        if said:
            raise ZipRefused(f"member {info.filename!r} {said}")
        folded = unicodedata.normalize("NFC", info.filename).casefold()
        if folded in seen:
            raise ZipRefused(f"member {info.filename!r} is there twice")
        seen.add(folded)
        declared += info.file_size
    if declared > limits.total_bytes:
        raise ZipRefused(f"declares {declared} bytes in all, over the {limits.total_bytes} "
                         f"allowed")


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: ZipLimits,
             room: int) -> Unpacked:
    cap = min(info.file_size, limits.member_bytes, room)
    digest = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as source, target.open("xb") as out:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                if size > cap:
                    raise ZipRefused(f"member {info.filename!r} inflates past the "
                                     f"{cap} bytes it may take: a compression bomb")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return Unpacked(info.filename, target, size, digest.hexdigest())
