"""Flow ``helios``: a PES V2 pushed by finance software, judged while it streams in,
[signed in the parapheur], deposited at the TdT for the DGFiP, acquitted, [archived],
and the finance software told of the outcome, acquitted or refused.

The PES is read once as it uploads (``connectors.helios.pes``): a refused file gets
every problem with its line and element path, and nothing is stored. Its indexed fields
(NomFic, IdColl, CodCol, bordereaux...) go into the document's metadata; a NomFic is
taken for its CodCol until its PES is refused (a second live or acquitted PES with the
same NomFic is refused, naming the first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from broker.flows.base import (
    FileRule,
    Flow,
    Inspection,
    Intake,
    Problem,
    Step,
    UploadedFile,
)
from broker.retry import PollPolicy
from connectors.helios.before_sending import SIGNED_PES
from connectors.helios.pes import MAX_PES_BYTES, check_pes, dematerialisation_problem
from connectors.helios.xades import trust_anchors

# An ordonnateur may take weeks to sign; the DGFiP answers within hours, sometimes days
# (the TdT warns after 48 hours).
SIGNATURE_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=300.0, deadline=30 * 86400.0)
ACQUIT_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=600.0, deadline=7 * 86400.0)
SAE_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=1800.0, deadline=30 * 86400.0)
PES = "pes"


class HeliosMetadata(BaseModel):
    """What the finance software may say of a PES; the rest is read from the file."""

    model_config = ConfigDict(extra="forbid")

    signature: bool = Field(default=False, description=(
        "have each bordereau signed (XAdES) in the parapheur before it goes; the PES then "
        "says InfoDematerialisee 1 and carries no signature yet"))
    archive: bool = Field(default=False, description="archive the PES and its acquit (SAE)")
    callback_url: str | None = Field(
        default=None, max_length=2000,
        description="where to POST the outcome (under connectors.callback.allowed)")


def inspect_pes(stream: IO[bytes], name: str, options: Mapping[str, Any]) -> Inspection:
    """The DGFiP's rules on the PES as it streams in, and its indexed fields."""
    trust_file = options.get("xades_trust")
    trust = trust_anchors(Path(trust_file)) if trust_file else None
    # Whether the PES goes to the parapheur is the metadata's to say (the flow judges that).
    summary, problems = check_pes(stream, name, MAX_PES_BYTES, trust, to_be_signed=None,
                                  accept_untrusted=bool(options.get("xades_accept_untrusted")))
    facts = {**summary.metadata(), "signed": summary.signed,
             "dematerialised": summary.info_dematerialisee}
    return Inspection(facts, [Problem(f"files.{PES}", f"{p.field}: {p.message}")
                              for p in problems], summary.warnings)


def _facts(files: Sequence[UploadedFile]) -> Mapping[str, Any]:
    found = next((f.inspection for f in files if f.role == PES and f.inspection), None)
    return found.facts if found is not None else {}


class HeliosFlow(Flow):
    def plan(self, metadata: Mapping[str, Any]) -> list[str]:
        steps = ["sign"] if metadata.get("signature") else []
        steps.append("transmit")
        if metadata.get("archive"):
            steps.append("archive")
        steps.append("notify")
        return steps

    def unique_key(self, metadata: BaseModel,
                   files: Sequence[UploadedFile] = ()) -> tuple[str, str] | None:
        facts = _facts(files)
        if not facts.get("nom_fic"):
            return None
        key = f"{facts.get('cod_col')}/{facts['nom_fic']}"
        # The store keeps 64 characters of a key: a longer one is kept as its digest.
        if len(key) > 64:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:57]
        return f"files.{PES}", key

    def derived(self, files: Sequence[UploadedFile]) -> dict[str, Any]:
        return dict(_facts(files))

    def check_content(self, metadata: BaseModel, files: Sequence[UploadedFile],
                      intake: Intake) -> list[Problem]:
        assert isinstance(metadata, HeliosMetadata)
        problems: list[Problem] = []
        for f in files:
            if f.role == PES and f.inspection is not None:
                problems += f.inspection.problems
                facts = f.inspection.facts
                said = dematerialisation_problem(bool(facts.get("signed")),
                                                 bool(facts.get("dematerialised")),
                                                 metadata.signature)
                if said:
                    problems.append(Problem(f"files.{PES}", f"{f.name}: {said}"))
        return problems


HELIOS = HeliosFlow(
    name="helios",
    description=("PES V2 to the DGFiP: [XAdES signature] → TdT → PES_ACQUIT → [SAE] → "
                 "finance software told"),
    files={PES: FileRule(min=1, max=1, description="the PES_Aller (ISO-8859-1 XML)")},
    metadata_model=HeliosMetadata,
    steps=[
        Step("sign", connector="parapheur", poll=SIGNATURE_POLLS, options={
            "sign": [PES], "signed_as": SIGNED_PES, "bordereau_as": "bordereau_signature",
            "format": "XAdES", "protocol": "HELIOS"}),
        Step("transmit", connector="tdt-helios", poll=ACQUIT_POLLS),
        Step("archive", connector="sae", poll=SAE_POLLS),
        Step("notify", connector="callback"),
    ],
    max_upload=MAX_PES_BYTES,
    on_rejected=frozenset({"notify"}),
    inspectors={PES: inspect_pes},
)


class RetourMetadata(BaseModel):
    """What the PES_Retour says (header, blocks) and where the TdT had it."""

    model_config = ConfigDict(extra="allow")


# The DGFiP's PES_Retour, ingested from the TdT and linked by IdColl, delivered to the
# entity's finance software.
RETOURS = Flow(
    name="helios-retour",
    description="A PES_Retour from the DGFiP, delivered to the finance software",
    files={},
    metadata_model=RetourMetadata,
    steps=[Step("deliver", connector="depot")],
    incoming_only=True,
)
