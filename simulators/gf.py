"""A finance software's inbox (logiciel de gestion financière), over real HTTP.

``POST /inbox`` (or ``/inbox/{box}``) takes multipart parts ``document`` (one or
more files) and ``metadata.json`` (a JSON object), streamed to disk. With an
``Idempotency-Key`` already stored, the idempotent inbox answers 409 and stores
nothing; ``--no-idempotency`` stores every copy, as many real inboxes do.

Run: ``python -m simulators.gf --port 0 [--fault 503:0.2] [--no-idempotency]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from broker.multipart import MultipartReader, Part
from simulators.common import Stats, add_common_arguments, create_app, run_simulator, store_dir_of
from simulators.faults import FaultRule

COUNTERS = ("received", "files", "replays", "duplicates", "callbacks", "callback_duplicates",
            "callback_refused")
_CHUNK = 256 * 1024
_METADATA_LIMIT = 1024 * 1024


class BadUpload(Exception):
    """The request is not a valid delivery; the message names the part."""


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    sha256: str
    path: Path

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass
class Receipt:
    receipt: str
    key: str | None
    box: str | None
    files: list[StoredFile]
    metadata: dict[str, Any]
    path: Path

    def describe(self) -> dict[str, Any]:
        return {
            "receipt": self.receipt,
            "key": self.key,
            "box": self.box,
            "files": [f.describe() for f in self.files],
            "metadata": self.metadata,
        }


def _open_for_write(path: Path) -> BinaryIO:
    return path.open("wb")


async def _save_document(reader: MultipartReader, part: Part, folder: Path,
                         rank: int) -> StoredFile:
    name = Path(part.filename or "").name
    if name in ("", ".", ".."):
        raise BadUpload(f"part 'document' #{rank + 1} has no file name")
    path = folder / f"{rank:03d}-{name}"
    digest = hashlib.sha256()
    size = 0
    out = await asyncio.to_thread(_open_for_write, path)
    try:
        async for chunk in reader.chunks():
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)  # buffered: lands in the page cache
    finally:
        await asyncio.to_thread(out.close)
    return StoredFile(name, size, digest.hexdigest(), path)


async def _read_metadata(reader: MultipartReader) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in reader.chunks():
        raw += chunk
        if len(raw) > _METADATA_LIMIT:
            raise BadUpload(f"part 'metadata.json' is larger than {_METADATA_LIMIT} bytes")
    try:
        metadata = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadUpload(f"part 'metadata.json' is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise BadUpload("part 'metadata.json' is not a JSON object")
    return metadata


async def read_upload(
    request: web.Request, folder: Path
) -> tuple[list[StoredFile], dict[str, Any]]:
    """Stream the ``document`` parts into ``folder``; return them and the metadata."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/"):
        raise BadUpload("expected a multipart body with parts 'document' and 'metadata.json'")
    files: list[StoredFile] = []
    metadata: dict[str, Any] | None = None
    try:
        reader = MultipartReader(request.content, content_type)
        while (part := await reader.next_part()) is not None:
            if part.name == "document":
                files.append(await _save_document(reader, part, folder, len(files)))
            elif part.name == "metadata.json":
                if metadata is not None:
                    raise BadUpload("part 'metadata.json' is given twice")
                metadata = await _read_metadata(reader)
            else:
                raise BadUpload(
                    f"unexpected part {part.name!r} (expected 'document' and 'metadata.json')"
                )
    except ValueError as exc:  # malformed multipart framing
        raise BadUpload(f"malformed multipart body: {exc}") from exc
    if not files:
        raise BadUpload("no part 'document' (one per file, with a file name)")
    if metadata is None:
        raise BadUpload("missing part 'metadata.json' (a JSON object)")
    return files, metadata


def _fingerprint(key: str | None, files: list[StoredFile], metadata: dict[str, Any]) -> str:
    if key:
        return f"key:{key}"
    content = [[f.name, f.sha256] for f in files], metadata
    return "content:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass
class Inbox:
    store_dir: Path
    idempotent: bool
    stats: Stats
    receipts: list[Receipt] = field(default_factory=list)
    by_key: dict[str, Receipt] = field(default_factory=dict)
    fingerprints: set[str] = field(default_factory=set)

    def _replay(self, key: str) -> web.Response:
        self.stats.incr("replays")
        body = {"error": "already received", "key": key, "receipt": self.by_key[key].receipt}
        return web.json_response(body, status=409)

    async def receive(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key") or None
        if self.idempotent and key in self.by_key:
            return self._replay(key)
        incoming = self.store_dir / f".incoming-{uuid.uuid4().hex}"
        await asyncio.to_thread(incoming.mkdir, parents=True)
        kept = False
        try:
            try:
                files, metadata = await read_upload(request, incoming)
            except BadUpload as exc:
                return web.json_response({"error": str(exc)}, status=400)
            # A twin with the same key may have been stored while this one streamed.
            if self.idempotent and key in self.by_key:
                return self._replay(key)
            receipt = self._record(key, request.match_info.get("box"), files, metadata)
            await asyncio.to_thread(incoming.rename, receipt.path)
            kept = True
        finally:
            if not kept:
                await asyncio.to_thread(shutil.rmtree, incoming, ignore_errors=True)
        return web.json_response({"receipt": receipt.receipt, "files": len(files)}, status=201)

    def _record(
        self, key: str | None, box: str | None, files: list[StoredFile], metadata: dict[str, Any]
    ) -> Receipt:
        receipt_id = f"gf-{uuid.uuid4().hex[:12]}"
        folder = self.store_dir / receipt_id
        stored = [StoredFile(f.name, f.size, f.sha256, folder / f.path.name) for f in files]
        receipt = Receipt(receipt_id, key, box, stored, metadata, folder)
        fingerprint = _fingerprint(key, files, metadata)
        if fingerprint in self.fingerprints:
            self.stats.incr("duplicates")
        self.fingerprints.add(fingerprint)
        if key is not None:
            self.by_key.setdefault(key, receipt)
        self.receipts.append(receipt)
        self.stats.incr("received")
        self.stats.incr("files", len(files))
        return receipt

    async def listing(self, _request: web.Request) -> web.Response:
        return web.json_response({"receipts": [r.describe() for r in self.receipts]})

    async def lookup(self, request: web.Request) -> web.Response:
        receipt = self.by_key.get(request.match_info["key"])
        if receipt is None:
            return web.json_response({"error": "no receipt for this Idempotency-Key"}, status=404)
        return web.json_response(receipt.describe())

    async def forget(self) -> None:
        folders = [r.path for r in self.receipts]
        self.receipts.clear()
        self.by_key.clear()
        self.fingerprints.clear()
        for folder in folders:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


class Callbacks:
    """The finance software's webhook: checks each call's HMAC, keeps one per delivery id."""

    def __init__(self, secret: str, stats: Stats) -> None:
        self.secret, self.stats = secret, stats
        self.received: dict[str, dict[str, Any]] = {}

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        stamp = request.headers.get("X-Demat-Timestamp", "")
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        if not hmac.compare_digest(request.headers.get("X-Demat-Signature", ""),
                                   f"sha256={mac.hexdigest()}"):
            self.stats.incr("callback_refused")
            return web.json_response({"error": "bad or missing signature"}, status=401)
        delivery = request.headers.get("X-Demat-Delivery", "")
        if delivery in self.received:
            self.stats.incr("callback_duplicates")
        else:
            self.stats.incr("callbacks")
            self.received[delivery] = json.loads(body)
        return web.json_response({"delivery": delivery})

    async def listing(self, _request: web.Request) -> web.Response:
        return web.json_response({"callbacks": self.received})

    async def forget(self) -> None:
        self.received.clear()


def build_app(
    *,
    idempotent: bool = True,
    callback_secret: str = "demat-callback-secret",
    store_dir: Path | None = None,
    faults: list[FaultRule] | None = None,
    seed: int = 0,
) -> web.Application:
    """The inbox app; without ``store_dir`` files go to a temporary dir removed at cleanup."""
    root, remove_store = store_dir_of(store_dir, "gf")
    stats = Stats(COUNTERS)
    inbox = Inbox(root, idempotent, stats)
    callbacks = Callbacks(callback_secret, stats)

    async def forget() -> None:
        await inbox.forget()
        await callbacks.forget()

    app = create_app(stats=stats, faults=faults or (), seed=seed, on_reset=forget)
    app.router.add_post("/callbacks", callbacks.receive)
    app.router.add_get("/callbacks", callbacks.listing)
    app.router.add_post("/inbox", inbox.receive)
    app.router.add_post("/inbox/{box}", inbox.receive)
    app.router.add_get("/inbox", inbox.listing)
    app.router.add_get("/inbox/{key}", inbox.lookup)
    app.on_cleanup.append(remove_store)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.gf", description="Finance software inbox simulator."
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--store-dir", type=Path, help="where files are stored (default: a temp dir)"
    )
    parser.add_argument(
        "--no-idempotency",
        action="store_true",
        help="store every copy, ignoring Idempotency-Key (counts duplicates)",
    )
    parser.add_argument("--callback-secret", default="demat-callback-secret",
                        help="the HMAC secret /callbacks checks each call's signature with")
    args = parser.parse_args(argv)
    app = build_app(
        idempotent=not args.no_idempotency,
        callback_secret=args.callback_secret,
        store_dir=args.store_dir,
        faults=args.faults,
        seed=args.seed,
    )
    run_simulator(app, args.host, args.port)


if __name__ == "__main__":
    main()
