"""A signed PES checked once more before it goes to the DGFiP, and the signature report.

Whoever signed it (the parapheur, or the finance software before intake), a signed PES is
judged again by the rules, every signature is verified against the platform's trust
anchors, and the verdicts are written down as the signature report (role
``rapport_signature``, archived with the PES). One that does not hold is refused with every
problem; nothing is deposited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from broker.xmlsafe import XmlError, parse_file
from connectors.base import FileView, Rejected, StepContext
from connectors.helios.pes import (
    ENCODINGS,
    MAX_PES_BYTES,
    PesSummary,
    accepted_untrusted,
    check_pes,
    untrusted_warning,
)
from connectors.helios.xades import Judged, Verdict, trust_anchors, verify_bordereau
from connectors.once import keep_file
from connectors.s2low.client import tdt_file_name

SIGNED_PES = "pes_signe"
REPORT = "rapport_signature"


def verify_whole_flow(path: Path, anchors: Sequence[x509.Certificate]) -> Verdict:
    """The verdict on a signature of the whole PES_Aller (``.``). It covers the whole file,
    so the file is read whole, through the XML gate and under the PES cap."""
    try:
        root = parse_file(path, max_bytes=MAX_PES_BYTES, encodings=ENCODINGS)
    except XmlError as exc:
        return Verdict(Judged.INCOMPLETE, f"the signed flow cannot be read whole: {exc}")
    return verify_bordereau(root, anchors)


def report_lines(name: str, summary: PesSummary, whole: Verdict | None,
                 anchors: Sequence[x509.Certificate] | None) -> list[str]:
    # No clock in it: a run again after a crash writes the same report (stored once).
    lines = [f"Signature report of {name} (NomFic {summary.nom_fic})"]
    if anchors is None:
        return [*lines, "signatures NOT verified here: the platform has no trust anchors "
                "(DEMAT_XADES_TRUST); the TdT and the DGFiP check them"]
    lines.append("trust anchors: " + "; ".join(a.subject.rfc4514_string() for a in anchors))
    if whole is not None:
        lines.append(f"whole flow (PES_Aller): {whole.judged}: {whole.reason}")
    for b in summary.bordereaux:
        said = (f"{b.verdict.judged}: {b.verdict.reason}" if b.verdict is not None
                else "not signed")
        lines.append(f"bordereau {b.number} ({b.id}, exercice {b.exercice}, line {b.line}): "
                     f"{said}")
    return lines


@dataclass(frozen=True)
class Checked:
    """Why the PES may not go (None: it may), and what was let through but must be seen."""

    refusal: Rejected | None = None
    warnings: list[str] = field(default_factory=list)


async def check_before_sending(ctx: StepContext, pes: FileView) -> Checked:
    """The signed PES judged again (an unsigned PES was judged at intake)."""
    if pes.role != SIGNED_PES and not ctx.metadata.get("signed"):
        return Checked()
    trust_file = ctx.platform.get("xades_trust")
    anchors = trust_anchors(Path(trust_file)) if trust_file else None
    accept = bool(ctx.platform.get("xades_accept_untrusted"))
    summary, found = await asyncio.to_thread(check_pes, pes.path, pes.name, MAX_PES_BYTES,
                                             anchors, accept_untrusted=accept)
    problems = [f"{p.field}: {p.message}" for p in found]
    whole = None
    if summary.signed_whole and anchors is not None and not found:
        whole = await asyncio.to_thread(verify_whole_flow, pes.path, anchors)
        if not whole.ok and not accepted_untrusted(whole, accept):
            problems.append(f"{pes.name}: PES_Aller/ds:Signature: {whole.judged}: "
                            f"{whole.reason}")
    if not summary.signed_whole:
        problems += [f"{pes.name}:{b.line}: bordereau {b.number} ({b.id}) is not signed"
                     for b in summary.bordereaux if not b.signed]
    if whole is not None and accepted_untrusted(whole, accept):
        summary.warnings.append(untrusted_warning(f"{pes.name}: PES_Aller", whole))
    lines = report_lines(pes.name, summary, whole, anchors) + summary.warnings
    stem = tdt_file_name(str(ctx.metadata.get("nom_fic") or ctx.document_id))
    await keep_file(ctx, REPORT, f"rapport-signature-{stem}.txt",
                    ("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8")
    if not problems:
        return Checked(warnings=summary.warnings)
    return Checked(Rejected(
        reason=f"the signed PES may not go to the DGFiP: {'; '.join(problems)}",
        metadata={"errors": [{"element": "PES signé", "code": None, "text": p}
                             for p in problems]}), summary.warnings)
