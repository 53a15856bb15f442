"""The préfecture's letters about acts (2-1, 3-1, 4-1, 5-1), fetched from the TdT.

Each unread document becomes an :class:`Incoming` linked to its act by IDActe;
it is marked read at the TdT only once the broker has stored it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from broker.outcomes import NewFile, PermanentError
from connectors.actes.envelope import EnvelopeError, read_archive
from connectors.actes.messages import CourrierRef, DefereTA
from connectors.actes.tdt_client import PrefectureDocument, TdtClient
from connectors.base import Incoming
from connectors.s2low.client import tdt_settings

FLOW = "actes-courrier"
LABELS = {"2": "courrier simple", "3": "demande de pièces complémentaires",
          "4": "lettre d'observations", "5": "déféré au tribunal administratif"}


async def incoming(config: Mapping[str, Any], entity: str, http: aiohttp.ClientSession,
                   workdir: Path) -> list[Incoming]:
    client = TdtClient(http, tdt_settings(config, entity))
    found = []
    for document in await client.list_prefecture_documents():
        found.append(await _fetch(client, document, workdir / document.id))
    return found


async def acknowledge(config: Mapping[str, Any], http: aiohttp.ClientSession, key: str) -> None:
    await TdtClient(http, tdt_settings(config, None)).mark_prefecture_document_read(key)


async def _fetch(client: TdtClient, document: PrefectureDocument, where: Path) -> Incoming:
    if not document.id_acte:
        raise PermanentError(f"préfecture document {document.id} names no act")
    await asyncio.to_thread(where.mkdir, parents=True, exist_ok=True)
    archive = where / f"courrier-{document.id}.tar.gz"
    await client.get_prefecture_document(document.id, archive)
    metadata: dict[str, Any] = {
        "type": document.type, "label": LABELS.get(document.type, "document"),
        "id_acte": document.id_acte, "numero": document.number,
        "tdt": {"document": document.id, "transaction": document.related_transaction},
    }
    files = await asyncio.to_thread(_unpack, archive, where, metadata)
    return Incoming(key=document.id, flow=FLOW, metadata=metadata, files=tuple(files),
                    link=("id_acte", document.id_acte),
                    summary=f"{metadata['label']} about {document.id_acte}")


def _unpack(archive: Path, where: Path, metadata: dict[str, Any]) -> list[NewFile]:
    """The archive itself, its message and its PDFs; what the message says into metadata."""
    files = [NewFile("archive", archive.name, archive, "application/gzip")]
    unpacked = where / "unpacked"
    unpacked.mkdir()
    try:
        contents = read_archive(archive, unpacked)
    except EnvelopeError as exc:
        # Keep what the préfecture sent, even unreadable: a person must see it.
        metadata["problems"] = [f"{p.field}: {p.message}" for p in exc.problems]
        return files
    for received in contents.messages:
        message = received.message
        metadata["code"] = message.CODE
        if isinstance(message, CourrierRef | DefereTA):
            metadata.update(message.model_dump(mode="json", exclude_none=True))
        files.append(_kept(received.path, where, "message", "application/xml"))
    for member in contents.files:
        files.append(_kept(member.path, where, "courrier",
                           member.kind.media_type or "application/octet-stream"))
    return files


def _kept(path: Path, where: Path, role: str, content_type: str) -> NewFile:
    # Out of the unpack dir, whose removal must not take the file with it.
    target = where / f"{role}-{path.name}"
    shutil.move(path, target)
    return NewFile(role, path.name, target, content_type)
