"""Flow ``depot``: deliver files and metadata to an entity's finance software or GED.

The same delivery later ends the Chorus Pro and HELIOS flows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from broker.flows.base import FileRule, Flow, Step


class DepotMetadata(BaseModel):
    """Any JSON object: the receiving software decides what it means."""

    model_config = ConfigDict(extra="allow")


DEPOT = Flow(
    name="depot",
    description="Delivery of documents (files + metadata) to finance software or a GED",
    files={"document": FileRule(min=1, description="the files to deliver")},
    metadata_model=DepotMetadata,
    steps=[Step("deliver", connector="depot")],
)
