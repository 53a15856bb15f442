"""The ``sign`` step: have a document signed in i-Parapheur and bring the result back.

Runs and polls of one step follow the dossier through its life:

1. No dossier yet: ``GetHistoDossier`` on the DossierID derived from the
   document id (a crash right after ``CreerDossier`` must not create a second
   one), then ``CreerDossier``; the id is saved at once; ``Pending``.
2. In circuit: ``Pending`` until the circuit ends; past the ``DateLimite`` we
   sent, a PermanentError.
3. ``Archive`` (signed): ``GetDossier``, store the signed PDF and the bordereau
   with ``save_file``, then only ``ArchiverDossier(EFFACER)``: ``Done``.
4. ``Rejet*``: keep the bordereau and the annotation, ``EffacerDossierRejete``,
   ``Rejected`` with the annotation verbatim.

Re-runs after a crash at any point find what was saved (refs, files) and end
the same way without sending anything twice.

Under protocol HELIOS (a PES, type PES_V2) the dossier also carries what the parapheur
signs by (``XPathPourSignatureXML``) and a ``VisuelPDF`` summary for the signer
(``connectors.helios.signing``); the signed PES comes back in ``FichierPES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from pathlib import PurePath
from typing import Any

import aiohttp

from connectors.base import (
    Done,
    FileView,
    NewFile,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    StepContext,
    secret_of,
    settings_of,
)
from connectors.helios.signing import CannotSign, signature_xpath, visuel_pdf
from connectors.parapheur.client import ParapheurClient
from connectors.parapheur.settings import ParapheurSettings, SignOptions
from connectors.parapheur.soap import (
    Attachment,
    DossierExists,
    DossierUnknown,
    LogDossier,
    NewDossier,
    ParapheurError,
    ReceivedFile,
    last_log_with,
    sanitize_id,
)

REF_DOSSIER = "parapheur_dossier"
REF_DATE_LIMITE = "parapheur_date_limite"
REF_SIGNATURE = "parapheur_signature"  # JSON, saved before ArchiverDossier
REF_REJET = "parapheur_rejet"  # JSON, saved before EffacerDossierRejete


FINISHED = "Archive"
SIGNED_STATUSES = frozenset({"Signe", "SignatairePapier", "CachetOK", "Vise"})


def parapheur_settings(config: Mapping[str, Any], entity: str) -> ParapheurSettings:
    """The entity's parapheur configuration, or a PermanentError saying what to fix."""
    return settings_of(ParapheurSettings, config, entity, "parapheur")


def sign_options(ctx: StepContext) -> SignOptions:
    """The step's options (checked when the catalog was built)."""
    return SignOptions.model_validate(dict(ctx.options))


def document_to_sign(ctx: StepContext) -> FileView:
    """The first file of the first role the step's options name (``sign``)."""
    roles = sign_options(ctx).sign
    for role in roles:
        found = ctx.files_with_role(role)
        if found:
            return found[0]
    listed = " or ".join(repr(r) for r in roles)
    raise PermanentError(f"document {ctx.document_id} has no file to sign (role {listed})")


def _annexes(ctx: StepContext) -> list[FileView]:
    role = sign_options(ctx).annexes
    return ctx.files_with_role(role) if role else []


def dossier_id_for(document_id: str, source: FileView) -> str:
    """Deterministic: the same document always maps to the same DossierID."""
    return sanitize_id(f"{document_id}_{PurePath(source.name).stem}", limit=100)


def _stem(ctx: StepContext) -> str:
    try:
        return PurePath(document_to_sign(ctx).name).stem or "document"
    except PermanentError:
        return "document"


def _suffix(content_type: str, default: str) -> str:
    return {"application/pdf": ".pdf", "text/xml": ".xml", "application/xml": ".xml"}.get(
        content_type.split(";")[0].strip().lower(), default
    )


class ParapheurConnector:
    """Signature in i-Parapheur through its v4 SOAP web services."""

    name = "parapheur"
    steps = frozenset({"sign", "visa"})
    settings_key = "parapheur"
    settings = ParapheurSettings
    options = SignOptions
    serves = frozenset({("actes", "sign"), ("helios", "sign"), ("facture", "visa")})

    async def check(self, config: Mapping[str, Any], entity: str,
                    http: aiohttp.ClientSession) -> str:
        """The circuits the settings name exist: GetListeTypes, then GetListeSousTypes."""
        settings = parapheur_settings(config, entity)
        client = ParapheurClient(http, settings.url, settings.login,
                                 secret_of(settings, "password", entity, "parapheur"),
                                 settings.timeout)
        types = await client.get_liste_types()
        found = []
        for circuit in settings.all_circuits():
            if circuit.type not in types:
                raise PermanentError(f"the parapheur has no type {circuit.type!r} "
                                     f"(types: {', '.join(types) or 'none'})")
            sous_types = await client.get_liste_sous_types(circuit.type)
            if circuit.sous_type not in sous_types:
                raise PermanentError(f"type {circuit.type!r} has no sous-type "
                                     f"{circuit.sous_type!r} (sous-types: "
                                     f"{', '.join(sous_types) or 'none'})")
            found.append(f"type {circuit.type!r} and sous-type {circuit.sous_type!r}")
        return " found; ".join(found) + " found"

    def __init__(self, today: Callable[[], date] = date.today) -> None:
        self._today = today

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step not in self.steps:
            raise PermanentError(f"the parapheur connector has no step {ctx.step!r}")
        if REF_REJET in ctx.refs:  # rejected and deleted on the parapheur: only the commit was lost
            return _rejected(json.loads(ctx.refs[REF_REJET]))
        settings = parapheur_settings(ctx.config, ctx.entity)
        client = ParapheurClient(
            ctx.http, settings.url, settings.login,
            secret_of(settings, "password", ctx.entity, "parapheur"), settings.timeout
        )
        known = ctx.refs.get(REF_DOSSIER)
        dossier_id = known or dossier_id_for(ctx.document_id, document_to_sign(ctx))
        try:
            history = await ctx.call(lambda: client.get_histo_dossier(dossier_id))
        except DossierUnknown as exc:
            if ctx.files_with_role(sign_options(ctx).signed_as):
                return _already_archived(ctx, dossier_id)
            if known:
                raise PermanentError(
                    f"dossier {dossier_id} is no longer on the parapheur (deleted by hand?) "
                    f"and no signed document was received: {exc.detail}"
                ) from exc
            return await self._create(ctx, client, settings, dossier_id)
        if not known:
            await _save_ref(ctx, REF_DOSSIER, dossier_id)  # found after a crash: adopt it
        return await self._follow(ctx, client, settings, dossier_id, history)

    async def _create(
        self,
        ctx: StepContext,
        client: ParapheurClient,
        settings: ParapheurSettings,
        dossier_id: str,
    ) -> Outcome:
        source = document_to_sign(ctx)
        date_limite = self._today() + timedelta(days=settings.deadline_days)
        xpath, visuel = await _xml_signature(ctx, source)
        circuit = settings.circuit(ctx.flow)
        new = NewDossier(
            dossier_id=dossier_id,
            type_technique=circuit.type,
            sous_type=circuit.sous_type,
            document=Attachment(source.path, source.content_type, source.name),
            visibilite=settings.visibilite,
            date_limite=date_limite,
            annexes=tuple(
                Attachment(f.path, f.content_type, sanitize_id(f.name))
                for f in _annexes(ctx)
            ),
            metadata=_metadata(ctx, settings),
            email_emetteur=settings.email_emetteur,
            annotation_publique=_objet(ctx),
            visuel_pdf=visuel,
            xpath=xpath,
        )
        try:
            created = await ctx.call(lambda: client.creer_dossier(new))
        except DossierExists:
            # A lost answer to our own CreerDossier: follow the dossier it created.
            history = await ctx.call(lambda: client.get_histo_dossier(dossier_id))
            await _save_ref(ctx, REF_DOSSIER, dossier_id)
            await _save_ref(ctx, REF_DATE_LIMITE, date_limite.isoformat())
            return await self._follow(ctx, client, settings, dossier_id, history)
        await _save_ref(ctx, REF_DOSSIER, created)
        await _save_ref(ctx, REF_DATE_LIMITE, date_limite.isoformat())
        return Pending(
            poll_after=settings.poll_interval,
            remote_ref=created,
            note=f"dossier {created} created in {circuit.type}/{circuit.sous_type}",
        )

    async def _follow(
        self,
        ctx: StepContext,
        client: ParapheurClient,
        settings: ParapheurSettings,
        dossier_id: str,
        history: list[LogDossier],
    ) -> Outcome:
        last = history[-1]
        if last.status == FINISHED:
            return await _finish_signed(ctx, client, dossier_id, history)
        if last.status.startswith("Rejet"):
            return await _finish_rejected(ctx, client, dossier_id, last)
        limit = ctx.refs.get(REF_DATE_LIMITE)
        if limit and self._today() > date.fromisoformat(limit):
            raise PermanentError(
                f"dossier {dossier_id} passed its DateLimite {limit} on the parapheur without "
                f"being signed (last status {last.status} by {last.nom or '?'} at "
                f"{last.timestamp}); sign or reject it there, or send the document again"
            )
        return Pending(
            poll_after=settings.poll_interval,
            remote_ref=dossier_id,
            note=f"{last.status}: {last.annotation}".rstrip(": "),
        )


async def _save_ref(ctx: StepContext, key: str, value: str) -> None:
    if ctx.save_ref is not None:
        await ctx.save_ref(key, value)


async def _store(ctx: StepContext, role: str, name: str, file: ReceivedFile) -> str:
    if ctx.save_file is None:
        raise PermanentError(
            "the parapheur connector needs save_file: the signed document must be stored "
            "before the parapheur deletes it"
        )
    content_type = file.content_type or "application/octet-stream"
    stored = await ctx.save_file(NewFile(role, name, file.path, content_type))
    return stored.name


async def _finish_signed(
    ctx: StepContext, client: ParapheurClient, dossier_id: str, history: list[LogDossier]
) -> Outcome:
    dossier = await ctx.call(lambda: client.get_dossier(dossier_id, ctx.scratch()))
    stem = _stem(ctx)
    roles = sign_options(ctx)
    # A PES comes back signed in FichierPES (some versions put it in DocPrincipal); it is
    # XML whatever content type the answer gives it.
    helios = roles.protocol == "HELIOS"
    signed = (dossier.fichier_pes if helios else None) or dossier.doc_principal
    if signed is None:
        raise PermanentError(f"parapheur GetDossier: dossier {dossier_id} is finished but "
                             f"carries no {'FichierPES nor ' if helios else ''}DocPrincipal")
    if helios and _suffix(signed.content_type, "") != ".xml":
        signed = dataclasses.replace(signed, content_type="application/xml")
    # Stored before anything is deleted on the parapheur: the signature is not kept twice.
    signed_name = await _store(
        ctx, roles.signed_as, f"{stem}-signe{_suffix(signed.content_type, '.pdf')}", signed
    )
    bordereau_name = None
    if dossier.bordereau is not None:
        bordereau_name = await _store(
            ctx, roles.bordereau_as, f"{stem}-bordereau.pdf", dossier.bordereau.file
        )
    if dossier.signature is not None:
        await _store(ctx, roles.signature_as, f"{stem}.p7s", dossier.signature)
    signer = last_log_with(history, SIGNED_STATUSES) or history[-1]
    summary = {
        "dossier_id": dossier_id,
        "signer": signer.nom,
        "date": signer.timestamp,
        "status": signer.status,
        "annotation": signer.annotation,
        "type": dossier.type_technique,
        "sous_type": dossier.sous_type,
        "signed_file": signed_name,
        "bordereau": bordereau_name,
    }
    await _save_ref(ctx, REF_SIGNATURE, json.dumps(summary, ensure_ascii=False))
    # DossierUnknown: an earlier try's answer was lost, the dossier is gone already.
    with contextlib.suppress(DossierUnknown):
        await ctx.call(lambda: client.archiver_dossier(dossier_id, "EFFACER"))
    return Done(metadata={"parapheur": summary}, note=f"signed by {signer.nom or '?'}")


def _already_archived(ctx: StepContext, dossier_id: str) -> Done:
    saved = ctx.refs.get(REF_SIGNATURE)
    summary: dict[str, Any] = json.loads(saved) if saved else {"dossier_id": dossier_id}
    return Done(metadata={"parapheur": summary}, note="signed; already removed from the parapheur")


async def _finish_rejected(
    ctx: StepContext, client: ParapheurClient, dossier_id: str, last: LogDossier
) -> Outcome:
    await _keep_bordereau(ctx, client, dossier_id)
    rejection = {
        "dossier_id": dossier_id,
        "status": last.status,
        "by": last.nom,
        "date": last.timestamp,
        "annotation": last.annotation,
    }
    await _save_ref(ctx, REF_REJET, json.dumps(rejection, ensure_ascii=False))
    with contextlib.suppress(DossierUnknown):
        await ctx.call(lambda: client.effacer_dossier_rejete(dossier_id))
    return _rejected(rejection)


async def _keep_bordereau(ctx: StepContext, client: ParapheurClient, dossier_id: str) -> None:
    """The rejection's bordereau, when the parapheur gives one (a nicety, never blocking)."""
    if ctx.save_file is None:
        return
    try:
        dossier = await ctx.call(lambda: client.get_dossier(dossier_id, ctx.scratch()))
    except ParapheurError:
        return
    if dossier.bordereau is not None:
        await _store(ctx, sign_options(ctx).bordereau_as, f"{_stem(ctx)}-bordereau.pdf",
                     dossier.bordereau.file)


def _rejected(rejection: Mapping[str, Any]) -> Rejected:
    annotation = str(rejection.get("annotation") or "")
    reason = annotation or (
        f"rejected on the parapheur ({rejection.get('status')}) by "
        f"{rejection.get('by') or '?'} without annotation"
    )
    return Rejected(reason=reason, metadata={"parapheur": dict(rejection)})


async def _xml_signature(ctx: StepContext,
                         source: FileView) -> tuple[str | None, Attachment | None]:
    """Protocol HELIOS: the XPath the PES is signed by, and the summary the signer reads."""
    if sign_options(ctx).protocol != "HELIOS":
        return None, None
    try:
        xpath = await asyncio.to_thread(signature_xpath, source.path)
    except CannotSign as exc:
        raise PermanentError(f"{source.name} cannot be signed: {exc}") from exc
    path = ctx.scratch("visuel.pdf")
    await asyncio.to_thread(path.write_bytes, visuel_pdf(ctx.metadata))
    return xpath, Attachment(path, "application/pdf", f"{PurePath(source.name).stem}.pdf")


def _objet(ctx: StepContext) -> str | None:
    objet = ctx.metadata.get("objet")
    return objet if isinstance(objet, str) and objet else None


def _metadata(ctx: StepContext, settings: ParapheurSettings) -> dict[str, str]:
    if not settings.metadata:
        return {}
    return {
        name: str(ctx.metadata[key])
        for name, key in settings.metadata.items()
        if ctx.metadata.get(key) not in (None, "")
    }


__all__ = [
    "ParapheurConnector",
    "ParapheurSettings",
    "document_to_sign",
    "dossier_id_for",
    "parapheur_settings",
]
