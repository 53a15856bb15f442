"""Folder drop: deliver a document as ``<root>/D/`` plus a sidecar ``<root>/D.json``.

Files are copied into ``<root>/.tmp-D-<random>/``, fsynced, and the dir is
renamed to ``<root>/D/`` in one step; the sidecar is written last, also through
a temporary name, so a consumer that waits for ``D.json`` only ever sees
complete deliveries. A re-run finds what an interrupted run left and finishes
it: nothing is delivered twice.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from connectors.base import FileView, PermanentError, TransientError

_CHUNK = 1024 * 1024
# Errors no retry will cure: the target is missing, read-only or not a dir.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR}

FolderStatus = Literal["delivered", "already delivered", "completed"]


@dataclass(frozen=True)
class FolderDrop:
    folder: Path
    sidecar: Path
    status: FolderStatus


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: FileView, target: Path) -> None:
    """Copy in chunks, checking the bytes against the stored sha256 and size."""
    digest = hashlib.sha256()
    with source.path.open("rb") as src, target.open("xb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    if size != source.size or digest.hexdigest() != source.sha256:
        raise PermanentError(
            f"stored file {source.name} does not match its recorded size/sha256 "
            f"({size} bytes, {digest.hexdigest()})"
        )


def _complete(folder: Path, files: Sequence[FileView]) -> bool:
    """Whether ``folder`` holds exactly these files, byte for byte."""
    if sorted(p.name for p in folder.iterdir()) != sorted(f.name for f in files):
        return False
    return all(_matches(view, folder / view.name) for view in files)


def _matches(view: FileView, path: Path) -> bool:
    try:
        if path.stat().st_size != view.size:
            return False
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() == view.sha256
    except FileNotFoundError:
        return False


def _remove_strays(root: Path, document_id: str) -> None:
    """Remove what a crashed run of this document left (never another document's)."""
    stray = re.compile(re.escape(f".tmp-{document_id}-") + r"[0-9a-f]{16}(\.json)?")
    for entry in root.iterdir():
        if not stray.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def _place_files(root: Path, document_id: str, files: Sequence[FileView]) -> Path:
    final = root / document_id
    staging = root / f".tmp-{document_id}-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        for view in files:
            _copy(view, staging / view.name)
        _fsync_dir(staging)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(root)
    return final


def _write_sidecar(root: Path, document_id: str, manifest: Mapping[str, Any]) -> Path:
    sidecar = root / f"{document_id}.json"
    staging = root / f".tmp-{document_id}-{secrets.token_hex(8)}.json"
    with staging.open("x", encoding="utf-8") as out:
        json.dump(manifest, out, ensure_ascii=False, indent=2)
        out.flush()
        os.fsync(out.fileno())
    staging.replace(sidecar)
    _fsync_dir(root)
    return sidecar


def _check_names(document_id: str, files: Sequence[FileView]) -> None:
    names = [document_id, *(f.name for f in files)]
    for name in names:
        if name in ("", ".", "..") or "/" in name or "\0" in name or name.startswith("."):
            raise PermanentError(f"{name!r} cannot be used as a file name in a folder drop")
    if len({f.name for f in files}) != len(files):
        raise PermanentError(f"document {document_id} has several files with the same name")


def drop(
    root: Path, document_id: str, files: Sequence[FileView], manifest: Mapping[str, Any]
) -> FolderDrop:
    """Deliver into ``root`` (blocking; see :func:`deliver_to_folder`)."""
    _check_names(document_id, files)
    if not root.is_dir():
        raise PermanentError(f"depot folder {root} does not exist or is not a directory")
    sidecar = root / f"{document_id}.json"
    final = root / document_id
    try:
        if sidecar.exists():
            return FolderDrop(final, sidecar, "already delivered")
        _remove_strays(root, document_id)
        status: FolderStatus = "delivered"
        if final.is_dir():
            if _complete(final, files):
                status = "completed"
            else:
                # No sidecar yet, so no consumer took it: deliver it afresh.
                shutil.rmtree(final)
        if status == "delivered":
            _place_files(root, document_id, files)
        return FolderDrop(final, _write_sidecar(root, document_id, manifest), status)
    except OSError as exc:
        message = f"depot folder {root}: cannot deliver {document_id}: {exc}"
        if exc.errno in _PERMANENT_ERRNOS:
            raise PermanentError(message) from exc
        raise TransientError(message) from exc


async def deliver_to_folder(
    root: Path, document_id: str, files: Sequence[FileView], manifest: Mapping[str, Any]
) -> FolderDrop:
    """Deliver into ``root`` without blocking the event loop."""
    return await asyncio.to_thread(drop, root, document_id, files, manifest)
