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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 256 * 1024


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
        """Stream ``chunks`` to a temporary file; raise TooLarge past ``limit`` bytes."""
        tmp_path = self.tmp / f"up-{uuid.uuid4().hex}"
        digest, size, head = hashlib.sha256(), 0, b""
        fh = await asyncio.to_thread(open, tmp_path, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit)
                if len(head) < 4096:
                    head += chunk[: 4096 - len(head)]
                digest.update(chunk)
                fh.write(chunk)
            await asyncio.to_thread(_flush_and_sync, fh)
        except BaseException:
            fh.close()
            tmp_path.unlink(missing_ok=True)
            raise
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

        def _commit() -> Path:
            final = self.path(staged.sha256)
            if final.exists():
                staged.tmp_path.unlink(missing_ok=True)
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.tmp_path, final)
            _fsync_dir(final.parent)
            return final

        return await asyncio.to_thread(_commit)

    def discard(self, staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(self.path(sha256).open, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
        finally:
            fh.close()


def _flush_and_sync(fh: object) -> None:
    fh.flush()  # type: ignore[attr-defined]
    os.fsync(fh.fileno())  # type: ignore[attr-defined]
