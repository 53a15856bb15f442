"""SAE: archive a document in the entity's electronic archiving system (As@lae, SEDA 2.1)."""

from connectors.sae.client import AsalaeClient, ChunkSession, SaeMessage
from connectors.sae.connector import SaeConfig, SaeConnector, describe, sae_config
from connectors.sae.seda import (
    Acknowledgement,
    Agencies,
    ArchiveDescription,
    ArchiveFile,
    PackedObject,
    SedaError,
    Transfer,
    TransferReply,
    build_bordereau,
    build_transfer,
    message_identifier,
    pack_objects,
    read_acknowledgement,
    read_transfer_reply,
    write_archive,
)

__all__ = [
    "Acknowledgement",
    "Agencies",
    "ArchiveDescription",
    "ArchiveFile",
    "AsalaeClient",
    "ChunkSession",
    "PackedObject",
    "SaeConfig",
    "SaeConnector",
    "SaeMessage",
    "SedaError",
    "Transfer",
    "TransferReply",
    "build_bordereau",
    "build_transfer",
    "describe",
    "message_identifier",
    "pack_objects",
    "read_acknowledgement",
    "read_transfer_reply",
    "sae_config",
    "write_archive",
]
