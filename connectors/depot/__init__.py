"""Depot: deliver a document to the entity's finance software or GED (HTTP inbox or folder)."""

from connectors.depot.client import DepotAnswer, DepotClient
from connectors.depot.connector import DepotConnector, FolderTarget, HttpTarget, depot_target
from connectors.depot.folder import FolderDrop, deliver_to_folder

__all__ = [
    "DepotAnswer",
    "DepotClient",
    "DepotConnector",
    "FolderDrop",
    "FolderTarget",
    "HttpTarget",
    "deliver_to_folder",
    "depot_target",
]
