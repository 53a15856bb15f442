"""Step ``receive``: the invoice downloaded from Chorus Pro, read, judged and kept.

The PIVOT comes through ``telecharger/groupe``; it is read as ``pivot.read_pivot`` does
(schema, business rules, attachments unpacked safely, Factur-X checked) and must be the
invoice the search named, addressed to the entity's SIRET. A refused invoice is
``Rejected`` with every problem: nothing goes to the finance software. Kept on the
document: the PIVOT (``pivot``), the invoice document (``facture``; Chorus Pro's PDF
rendering when the supplier sent data, not a PDF), the further attachments
(``piece_jointe``) and what the PIVOT says, as JSON (``donnees``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from connectors.base import Done, NewFile, Outcome, PermanentError, Rejected, StepContext
from connectors.chorus.client import ChorusClient
from connectors.chorus.pivot import ATTACHMENT, Invoice, read_pivot

MAX_PROBLEMS_SAID = 20


def _problems(ctx: StepContext, invoice: Invoice, siret: str) -> list[str]:
    said = []
    expected_id = int(ctx.metadata["id_facture"])
    if invoice.chorus_id is not None and invoice.chorus_id != expected_id:
        said.append(f"the PIVOT is invoice {invoice.chorus_id}, not {expected_id}")
    number = ctx.metadata.get("numero_facture")
    if number and invoice.number != number:
        said.append(f"the PIVOT's number is {invoice.number!r}, Chorus Pro listed {number!r}")
    if invoice.debtor.get("siret") != siret:
        said.append(f"the invoice is addressed to SIRET {invoice.debtor.get('siret')}, not to "
                    f"the entity's {siret}")
    return said


async def receive(ctx: StepContext) -> Outcome:
    client = ChorusClient.of(ctx.http, ctx.config, ctx.entity)
    invoice_id = int(ctx.metadata["id_facture"])
    work = ctx.scratch("chorus")
    files = await ctx.call(lambda: client.download([invoice_id], work / "pivot"))
    pivots = [f for f in files if f.name.lower().endswith(".xml")]
    if len(pivots) != 1:
        raise PermanentError(f"Chorus Pro sent {len(files)} file(s) for invoice {invoice_id}, "
                             f"not one PIVOT: {', '.join(f.name for f in files)}")
    reading = await asyncio.to_thread(read_pivot, pivots[0].path, work / "read")
    problems = [f"{p.field}: {p.message}" for p in reading.problems]
    if not problems and len(reading.invoices) != 1:
        problems.append(f"the PIVOT holds {len(reading.invoices)} invoices, not one")
    if not problems:
        problems = _problems(ctx, reading.invoices[0], client.settings.siret)
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SAID])
        more = len(problems) - MAX_PROBLEMS_SAID
        # The PIVOT is kept as it came, for the person who decides what to tell the supplier.
        return Rejected(reason=f"invoice refused: {shown}" + (f" (and {more} more)"
                                                              if more > 0 else ""),
                        metadata={"problemes": problems},
                        files=(NewFile("pivot", pivots[0].name, pivots[0].path,
                                       "application/xml"),))
    invoice = reading.invoices[0]
    kept = [NewFile("pivot", pivots[0].name, pivots[0].path, "application/xml")]
    document = invoice.document
    if document is None or document.content_type != "application/pdf":
        # Sent as data (UBL, CII): Chorus Pro renders it as a PDF for people.
        rendered = await ctx.call(lambda: client.download([invoice_id], work / "pdf",
                                                          fmt="PDF", attachments=False))
        kept += [NewFile("facture", f.name, f.path, "application/pdf") for f in rendered]
        if document is not None:
            kept.append(NewFile("piece_jointe", document.name, document.path,
                                document.content_type))
    else:
        kept.append(NewFile("facture", document.name, document.path, document.content_type))
    for attachment in invoice.attachments:
        if attachment.kind == ATTACHMENT:
            kept += [NewFile("piece_jointe", f.name, f.path, f.content_type)
                     for f in attachment.files]
    data = invoice.data()
    data_path = work / "donnees.json"
    await asyncio.to_thread(data_path.write_text,
                            json.dumps({"id_facture": invoice_id, **data}, ensure_ascii=False,
                                       indent=2), "utf-8")
    kept.append(NewFile("donnees", f"facture-{invoice_id}.json", data_path,
                        "application/json"))
    return Done(metadata={"facture": _summary(invoice)}, files=tuple(kept),
                note=f"invoice {invoice.number} received ({len(kept)} files)")


def _summary(invoice: Invoice) -> dict[str, Any]:
    return {"numero": invoice.number, "type": invoice.kind, "emise": invoice.issued,
            "fournisseur": invoice.supplier.get("name"), "siret_fournisseur":
            invoice.supplier.get("id"), "montants": invoice.amounts,
            "engagement": invoice.commitment, "service": invoice.debtor.get("service_code"),
            **({"facturx": next((a.facturx.level for a in invoice.attachments
                                 if a.facturx), None)} if any(a.facturx for a in
                                                               invoice.attachments) else {})}

