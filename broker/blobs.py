"""Content-addressed file store: ``blobs/ab/abcdef…`` named by SHA-256.

Uploads are streamed to ``tmp/`` with a size cap and hashed on the way; they
enter ``blobs/`` only when the document that references them is about to be
committed, so a refused upload leaves the blob directory untouched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 256 * 1024
# Uploads up to this size are gathered in memory and written in one go.
SMALL = 64 * 1024


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than the {limit} bytes allowed")
        self.limit = limit


@dataclass(frozen=True)
class Staged:
    """A fully written, hashed file waiting in tmp/ to be committed."""

    tmp_path: Path
    sha256: str
    size: int
    head: bytes  # first bytes, for content sniffing


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    async def stage(self, chunks: AsyncIterator[bytes], limit: int) -> Staged:
        """Stream ``chunks`` to a temporary file; raise TooLarge past ``limit`` bytes.

        A small file is gathered in memory and written by one call to the thread
        pool; a larger one is written as it comes, so memory stays flat.
        """
        tmp_path = self.tmp / f"up-{uuid.uuid4().hex}"
        digest, size, head = hashlib.sha256(), 0, b""
        gathered: list[bytes] = []
        fh: BinaryIO | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit)
                if len(head) < 4096:
                    head += chunk[: 4096 - len(head)]
                digest.update(chunk)
                if fh is not None:
                    fh.write(chunk)
                    continue
                gathered.append(chunk)
                if size > SMALL:
                    fh = await asyncio.to_thread(open, tmp_path, "wb")
                    fh.writelines(gathered)
                    gathered.clear()
            if fh is None:
                await asyncio.to_thread(_write_synced, tmp_path, gathered)
            else:
                await asyncio.to_thread(_flush_and_sync, fh)
        except BaseException:
            if fh is not None:
                fh.close()
            tmp_path.unlink(missing_ok=True)
            raise
        if fh is not None:
            fh.close()
        return Staged(tmp_path, digest.hexdigest(), size, head)

    async def stage_file(self, source: Path) -> Staged:
        """Stage a local file (e.g. produced by a connector) by moving it."""

        def _move() -> Staged:
            digest, size, head = hashlib.sha256(), 0, b""
            with source.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    if not head:
                        head = chunk[:4096]
                    digest.update(chunk)
                    size += len(chunk)
            tmp_path = self.tmp / f"out-{uuid.uuid4().hex}"
            shutil.move(source, tmp_path)
            return Staged(tmp_path, digest.hexdigest(), size, head)

        return await asyncio.to_thread(_move)

    async def commit(self, staged: Staged) -> Path:
        """Move a staged file to its content address (durably) and return it."""
        (final,) = await self.commit_many([staged])
        return final

    async def commit_many(self, staged: Sequence[Staged]) -> list[Path]:
        """Move staged files to their content addresses, one directory sync per directory."""

        def _commit() -> list[Path]:
            finals, moved_into = [], set()
            for item in staged:
                final = self.path(item.sha256)
                finals.append(final)
                if final.exists():
                    item.tmp_path.unlink(missing_ok=True)
                    continue
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item.tmp_path, final)
                moved_into.add(final.parent)
            for directory in moved_into:
                _fsync_dir(directory)
            return finals

        return await asyncio.to_thread(_commit) if staged else []

    def discard(self, staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(self.path(sha256).open, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
        finally:
            fh.close()


def _flush_and_sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _write_synced(path: Path, chunks: Sequence[bytes]) -> None:
    with path.open("wb") as fh:
        fh.writelines(chunks)
        _flush_and_sync(fh)
