"""The connectors this build ships, by name (the name is also the queue suffix)."""

from __future__ import annotations

from connectors.actes.connector import TdtActesConnector
from connectors.base import Connector
from connectors.depot.connector import DepotConnector
from connectors.parapheur.connector import ParapheurConnector
from connectors.sae.connector import SaeConnector


def all_connectors() -> dict[str, Connector]:
    connectors: list[Connector] = [DepotConnector(), ParapheurConnector(), TdtActesConnector(),
                                   SaeConnector()]
    return {c.name: c for c in connectors}
