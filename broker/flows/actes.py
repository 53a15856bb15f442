"""Flow ``actes``: an authority's act, optionally signed in the parapheur, transmitted
through the TdT to the préfecture (@CTES), acknowledged (ARActe), optionally archived.

Steps are chosen by the metadata: [sign] → transmit → [archive]. An acknowledged act
can be cancelled (Annulation → ARAnnulation) with the action ``annuler``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from broker.flows.base import Flow, Intake, Problem, Step, UploadedFile
from broker.retry import PollPolicy
from connectors.actes.classification import Classification
from connectors.actes.rules import FILE_RULES, MAX_TOTAL_BYTES, ActeMetadata, check_act

# A secretary or an elected official may take weeks to sign; the préfecture answers
# within minutes to days.
SIGNATURE_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=300.0, deadline=30 * 86400.0)
PREFECTURE_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=600.0, deadline=7 * 86400.0)
SAE_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=1800.0, deadline=30 * 86400.0)


class ActesFlow(Flow):
    def plan(self, metadata: Mapping[str, Any]) -> list[str]:
        steps = ["sign"] if metadata.get("signature") else []
        steps.append("transmit")
        if metadata.get("archive"):
            steps.append("archive")
        return steps

    def unique_key(self, metadata: BaseModel,
                   files: Sequence[UploadedFile] = ()) -> tuple[str, str] | None:
        assert isinstance(metadata, ActeMetadata)
        return "metadata.numero", metadata.numero

    def check_content(self, metadata: BaseModel, files: Sequence[UploadedFile],
                      intake: Intake) -> list[Problem]:
        assert isinstance(metadata, ActeMetadata)
        current = (Classification.model_validate(intake.classification)
                   if intake.classification else None)
        return [p if p.field.startswith("files") else Problem(f"metadata.{p.field}", p.message)
                for p in check_act(metadata, files, current, intake.today)]


class CourrierMetadata(BaseModel):
    """What the préfecture's letter says (type, IDActe, dates, motif...)."""

    model_config = ConfigDict(extra="allow")


# Letters from the préfecture (2-1, 3-1, 4-1, 5-1), ingested from the TdT and linked
# to their act; stored and visible, answered by a person.
COURRIERS = Flow(
    name="actes-courrier",
    description="A préfecture letter about an act (courrier, pièces, observations, déféré)",
    files={},
    metadata_model=CourrierMetadata,
    steps=[],
    incoming_only=True,
)

ACTES = ActesFlow(
    name="actes",
    description="Acts sent to the contrôle de légalité: [signature] → TdT → ARActe → [SAE]",
    files=FILE_RULES,
    metadata_model=ActeMetadata,
    steps=[
        Step("sign", connector="parapheur", poll=SIGNATURE_POLLS, options={
            "sign": ["acte"], "annexes": "annexe", "signed_as": "acte_signe",
            "bordereau_as": "bordereau_signature", "format": "PAdES"}),
        Step("transmit", connector="tdt", poll=PREFECTURE_POLLS),
        Step("archive", connector="sae", poll=SAE_POLLS),
        Step("cancel", connector="tdt", poll=PREFECTURE_POLLS),
    ],
    max_upload=MAX_TOTAL_BYTES,
    actions={"annuler": ("cancel", "id_acte")},
    classification_by="classification",
)
