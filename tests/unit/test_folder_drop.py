"""Folder drop: complete deliveries only, idempotent re-runs, crash recovery."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.base import FileView, PermanentError, TransientError
from connectors.depot import folder
from connectors.depot.folder import drop

DOC = "0195d3a0-doc"
MANIFEST = {"document_id": DOC, "metadata": {"objet": "Délibération n°12"}}


def stored_file(tmp_path: Path, name: str, content: bytes) -> FileView:
    path = tmp_path / "blobs" / hashlib.sha256(content).hexdigest()
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    return FileView(f"f-{name}", "document", name, "application/pdf", len(content), digest, path)


@pytest.fixture
def files(tmp_path: Path) -> list[FileView]:
    return [
        stored_file(tmp_path, "acte.pdf", b"%PDF" * 5000),
        stored_file(tmp_path, "a.xml", b"<a/>"),
    ]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    target = tmp_path / "ged"
    target.mkdir()
    return target


def assert_delivered(root: Path, files: list[FileView]) -> None:
    assert json.loads((root / f"{DOC}.json").read_text(encoding="utf-8")) == MANIFEST
    assert {p.name: p.read_bytes() for p in (root / DOC).iterdir()} == {
        f.name: f.path.read_bytes() for f in files
    }
    assert sorted(p.name for p in root.iterdir()) == [DOC, f"{DOC}.json"]  # no leftovers


def test_delivers_files_then_sidecar(root: Path, files: list[FileView]) -> None:
    result = drop(root, DOC, files, MANIFEST)
    assert (result.status, result.folder, result.sidecar) == (
        "delivered",
        root / DOC,
        root / f"{DOC}.json",
    )
    assert_delivered(root, files)


def test_rerun_delivers_nothing_again(root: Path, files: list[FileView]) -> None:
    drop(root, DOC, files, MANIFEST)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    result = drop(root, DOC, files, MANIFEST)
    assert result.status == "already delivered"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_crash_before_sidecar_is_completed(
    root: Path, files: list[FileView], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: object) -> Path:
        raise OSError(errno.EIO, "disk went away")

    monkeypatch.setattr(folder, "_write_sidecar", crash)
    with pytest.raises(TransientError):
        drop(root, DOC, files, MANIFEST)
    assert (root / DOC).is_dir() and not (root / f"{DOC}.json").exists()
    # Leftovers of crashed runs: this document's are removed, another's are kept.
    (root / f".tmp-{DOC}-0123456789abcdef").mkdir()
    (root / f".tmp-{DOC}-fedcba9876543210.json").write_text("{")
    (root / f".tmp-{DOC}-2-0123456789abcdef").mkdir()
    monkeypatch.undo()
    inode = (root / DOC / "acte.pdf").stat().st_ino

    result = drop(root, DOC, files, MANIFEST)

    assert result.status == "completed"
    assert (root / DOC / "acte.pdf").stat().st_ino == inode  # verified, not copied again
    (root / f".tmp-{DOC}-2-0123456789abcdef").rmdir()
    assert_delivered(root, files)


def test_incomplete_folder_without_sidecar_is_delivered_afresh(
    root: Path, files: list[FileView]
) -> None:
    (root / DOC).mkdir()
    (root / DOC / "acte.pdf").write_bytes(b"%PDF truncated")
    result = drop(root, DOC, files, MANIFEST)
    assert result.status == "delivered"
    assert_delivered(root, files)


def test_corrupt_source_is_refused_and_leaves_nothing(root: Path, files: list[FileView]) -> None:
    files[0].path.write_bytes(b"not what was stored")
    with pytest.raises(PermanentError, match=r"acte\.pdf"):
        drop(root, DOC, files, MANIFEST)
    assert list(root.iterdir()) == []


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        target = tmp_path / "readonly"
        target.mkdir(mode=0o500)
        return target
    # root ignores permission bits; sysfs refuses new directories even to root.
    target = Path("/sys")
    try:
        (target / "demat-probe").mkdir()
    except OSError:
        return target
    pytest.fail("found no directory this user cannot write into")


@pytest.mark.parametrize("case", ["missing", "a-file", "unwritable"])
def test_unusable_target_is_permanent(tmp_path: Path, files: list[FileView], case: str) -> None:
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "a-file":
        target = files[0].path
    else:
        target = _unwritable_dir(tmp_path)
    with pytest.raises(PermanentError, match=re.escape(str(target))):
        drop(target, DOC, files, MANIFEST)


@pytest.mark.parametrize("name", ["../escape.pdf", ".hidden", ""])
def test_unsafe_names_are_refused(root: Path, tmp_path: Path, name: str) -> None:
    unsafe = replace(stored_file(tmp_path, "x", b"x"), name=name)
    with pytest.raises(PermanentError, match="file name"):
        drop(root, DOC, [unsafe], MANIFEST)
    assert list(root.iterdir()) == []
