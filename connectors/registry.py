"""The connectors this build ships, by name (the name is also the queue suffix)."""

from __future__ import annotations

from connectors.base import Connector
from connectors.depot.connector import DepotConnector


def all_connectors() -> dict[str, Connector]:
    connectors: list[Connector] = [DepotConnector()]
    return {c.name: c for c in connectors}
