"""Flow ``classification``: fetch an entity's current classification from its peer.

A refresh is a document like any other: its one step is retried, journaled and seen
on the same pages as acts. The current classification of an entity for a flow is the
one kept by its latest completed ``classification`` document (``reads.classification``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.flows.base import Flow, Step


class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    of: Literal["actes"] = Field(description="the flow whose classification is fetched")


CLASSIFICATION = Flow(
    name="classification",
    description="An entity's current classification, fetched from its peer (ACTES: 7-2 "
                "from the TdT)",
    files={},
    metadata_model=ClassificationRequest,
    steps=[Step("fetch", connector="tdt")],
)
