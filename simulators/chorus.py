"""Chorus Pro behind PISTE, as a recipient sees it, over real HTTP.

* ``POST /api/oauth/token`` (form ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``, ``scope``): ``{token_type, access_token, expires_in}``; tokens expire
  after ``--token-ttl`` seconds and are refused (401) afterwards.
* ``POST /cpro/<domain>/v1/<operation>`` (JSON), each with ``Authorization`` and the
  ``cpro-account`` header (base64 ``login:password`` of the technical account; refused
  with 403): ``structures/v1/rechercher``, ``structures/v1/rechercher/services``,
  ``factures/v1/rechercher/recipiendaire`` (status-change window, paging;
  ``codeRetour`` 20000 when nothing is found), ``factures/v1/consulter/recipiendaire``,
  ``factures/v1/consulter/historique`` (newest first), ``factures/v1/telecharger/groupe``
  (a ZIP of ``facture_<idFacture>.xml`` PIVOT files or ``.pdf``, base64 in
  ``fichierResultat``; 413 over ``--download-cap``), ``factures/v1/traiter/recue`` (the
  recipient's transitions; ``codeRetour`` 20002 when inconsistent, motif required for
  REJETEE and SUSPENDUE, ``numeroDPMandat`` for MANDATEE),
  ``transverses/v1/recuperer/etats/traitement``, ``transverses/v1/health-check``.
  Errors are HTTP 400 with ``{codeRetour, libelle}``.
* More than ``--rate`` calls in a second for one token: 429 with Retry-After.

Invoices appear over time: ``POST /_control/schedule`` ``{"invoices": [{"siret": S,
"count": N}], "over": seconds}``; ``POST /_control/invoices`` adds some at once (with
``facturx``, ``attachment_bytes``, or a raw ``pivot`` in base64 to serve as is);
``POST /_control/status`` sets a status as the supplier or Hélios would (COMPLETEE,
MISE_EN_PAIEMENT); ``GET /_control/invoices/{id}`` shows one with its history.

``/stats``: ``tokens``, ``searches``, ``downloads``, ``invoices_downloaded``,
``status_changes``, ``refused_changes``, ``duplicates`` (a status the recipient sent twice
for one invoice in one case), ``rate_limited``, ``too_large``.

Run: ``python -m simulators.chorus --port 0 [--token-ttl 60] [--rate 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import secrets
import time
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from connectors.chorus.statuses import CODES, NEEDS_MANDATE, NEEDS_MOTIF, NEXT
from simulators.chorus_samples import Spec, invoice_pdf, pivot, siret
from simulators.common import Stats, add_common_arguments, create_app, run_simulator

COUNTERS = ("tokens", "searches", "downloads", "invoices_downloaded", "status_changes",
            "refused_changes", "duplicates", "rate_limited", "too_large")
NO_RESULT = 20000
INCONSISTENT = 20002
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Structure:
    id: int
    siret: str
    name: str
    services: list[tuple[int, str]]


@dataclass
class Change:
    id: int
    status: str
    at: datetime
    comment: str = ""
    by: str = "Chorus Pro"


@dataclass
class Invoice:
    id: int
    number: str
    structure: Structure
    service: tuple[int, str]
    spec: Spec
    history: list[Change] = field(default_factory=list)
    raw_pivot: bytes | None = None
    # FACTURE, or FACTURE_TRAVAUX (works, listed by their own search)
    payment_kind: str = "FACTURE"
    # Statuses the recipient sent since the invoice was last (re)opened to it.
    sent: set[str] = field(default_factory=set)

    @property
    def status(self) -> str:
        return self.history[-1].status

    @property
    def changed(self) -> datetime:
        return self.history[-1].at

    def summary(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "codeDestinataire": self.structure.siret, "codeFournisseur": spec.supplier_siret,
            "codeServiceExecutant": self.service[1], "codeServiceFournisseur": None,
            "dateDepot": spec.issued.isoformat(), "dateFacture": spec.issued.isoformat(),
            "dateHeureEtatCourant": _stamp(self.changed),
            "designationDestinataire": self.structure.name,
            "designationFournisseur": spec.supplier_name, "devise": "EUR",
            "factureTelechargeeParDestinataire": False, "idDestinataire": self.structure.id,
            "idFacture": self.id, "idServiceExecutant": self.service[0],
            "montantAPayer": float(spec.ttc), "montantHT": float(spec.ht),
            "montantTTC": float(spec.ttc), "nomServiceExecutant": self.service[1].title(),
            "numeroBonCommande": spec.engagement, "numeroFacture": self.number,
            "numeroMarche": spec.marche, "statut": self.status,
            "typeDemandePaiement": self.payment_kind,
            "typeFacture": "FACTURE" if spec.kind == "380" else "AVOIR",
            "typeFactureTravaux": None, "typeIdentifiantFournisseur": "SIRET",
        }

    def pivot(self) -> bytes:
        if self.raw_pivot is not None:
            return self.raw_pivot
        self.spec.status_code = CODES[self.status]
        return pivot(self.spec)


class ChorusStore:
    def __init__(self, stats: Stats, *, client_id: str, client_secret: str, login: str,
                 password: str, token_ttl: float, download_cap: int, rate: int,
                 seed: int) -> None:
        self.stats = stats
        self.client_id, self.client_secret = client_id, client_secret
        self.account = base64.b64encode(f"{login}:{password}".encode()).decode()
        self.token_ttl = token_ttl
        self.download_cap = download_cap
        self.rate = rate
        self.rng = random.Random(seed)
        self.tokens: dict[str, float] = {}
        self.calls: dict[str, Counter[int]] = {}
        self.structures: dict[str, Structure] = {}
        self.invoices: dict[int, Invoice] = {}
        self.downloaded: Counter[int] = Counter()
        self._next_invoice = 1000
        self._next_change = 1
        self._tasks: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self.tokens.clear()
        self.structures.clear()
        self.invoices.clear()
        self.downloaded.clear()
        self._next_invoice = 1000

    # -- the supplier's side -----------------------------------------------------------

    def structure(self, code: str) -> Structure:
        if code not in self.structures:
            n = len(self.structures) + 1
            self.structures[code] = Structure(
                100 + n, code, f"Collectivité {code}",
                [(1000 + 10 * n, "FACTURES"), (1001 + 10 * n, "TECHNIQUE")])
        return self.structures[code]

    def add(self, code: str, *, facturx: bool | None = None, attachment_bytes: int = 0,
            raw_pivot: bytes | None = None, service: str | None = None,
            payment_kind: str = "FACTURE") -> Invoice:
        structure = self.structure(code)
        number_id = self._next_invoice
        self._next_invoice += 1
        chosen = next((s for s in structure.services if s[1] == service), structure.services[0])
        rng = random.Random(number_id)
        spec = Spec(number=f"FA{number_id:08d}", debtor_siret=code,
                    debtor_name=structure.name, service_code=chosen[1], chorus_id=number_id,
                    supplier_siret=siret(number_id % 97 + 1),
                    supplier_name=f"Fournisseur {number_id % 97 + 1}",
                    lines=[("Prestation", Decimal(rng.randint(100, 99999)) / 100,
                            Decimal(rng.randint(1, 9)))],
                    issued=date.today(),
                    facturx=(number_id % 3 == 0) if facturx is None else facturx)
        if attachment_bytes:
            spec.extra = [("annexe.pdf", rng.randbytes(attachment_bytes))]
        elif number_id % 2 == 0:
            spec.extra = [("bon-de-livraison.pdf", b"%PDF-1.4 bon de livraison " +
                           str(number_id).encode())]
        invoice = Invoice(number_id, spec.number, structure, chosen, spec, raw_pivot=raw_pivot,
                          payment_kind=payment_kind)
        moment = _now()
        for status in ("DEPOSEE", "EN_COURS_ACHEMINEMENT", "MISE_A_DISPOSITION"):
            self._record(invoice, status, moment)
        self.invoices[number_id] = invoice
        return invoice

    def _record(self, invoice: Invoice, status: str, at: datetime, comment: str = "",
                by: str = "Chorus Pro") -> None:
        invoice.history.append(Change(self._next_change, status, at, comment, by))
        self._next_change += 1

    def set_status(self, invoice: Invoice, status: str, comment: str = "") -> None:
        """A change made by the supplier, Chorus Pro or Hélios (not the recipient)."""
        self._record(invoice, status, _now(), comment, "Fournisseur")
        invoice.sent.clear()  # a new case for the recipient

    def schedule(self, wanted: list[tuple[str, int]], over: float) -> int:
        total = sum(count for _, count in wanted)
        order = [code for code, count in wanted for _ in range(count)]
        self.rng.shuffle(order)

        async def appear() -> None:
            pause = over / max(total, 1)
            for code in order:
                self.add(code)
                await asyncio.sleep(pause)

        task = asyncio.create_task(appear())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return total

    # -- PISTE ---------------------------------------------------------------------------

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_ttl
        self.stats.incr("tokens")
        return token

    def token_ok(self, header: str) -> str | None:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or self.tokens.get(token, 0) < time.monotonic():
            return None
        return token

    def over_rate(self, token: str) -> bool:
        if not self.rate:
            return False
        second = int(time.monotonic())
        counts = self.calls.setdefault(token, Counter())
        counts[second] += 1
        for old in [s for s in counts if s < second]:
            del counts[old]
        return counts[second] > self.rate


STORE = web.AppKey("chorus", ChorusStore)


def _error(code: int, label: str, status: int = 400) -> web.Response:
    return web.json_response({"codeRetour": code, "libelle": label}, status=status)


def _ok(**body: Any) -> web.Response:
    return web.json_response({"codeRetour": 0, "libelle": "CODE PAR DEFAUT", **body})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"codeRetour": 1, "libelle": str(exc)}),
                                 content_type="application/json") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"codeRetour": 1, "libelle": "not an object"}',
                                 content_type="application/json")
    return body


def _invoice(store: ChorusStore, value: Any) -> Invoice | web.Response:
    try:
        found = store.invoices.get(int(value))
    except (TypeError, ValueError):
        found = None
    if found is None:
        return web.json_response({"retourFonctionnel": {
            "codeRetourFonctionnel": "GDP_MSG_11.008",
            "libelleRetourFonctionnel": "La demande de paiement est inconnue du système."}},
            status=400)
    return found


async def token(request: web.Request) -> web.Response:
    store = request.app[STORE]
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    if form.get("client_id") != store.client_id or form.get("client_secret") != \
            store.client_secret:
        return web.json_response({"error": "invalid_client",
                                  "error_description": "Client authentication failed"},
                                 status=401)
    ttl = store.token_ttl
    return web.json_response({"access_token": store.issue_token(), "token_type": "Bearer",
                              "expires_in": ttl if ttl % 1 else int(ttl), "scope": "openid"})


def guard(store: ChorusStore) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            held = store.token_ok(request.headers.get("Authorization", ""))
            if held is None:
                return web.json_response({"error": "invalid_token"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
            if request.headers.get("cpro-account") != store.account:
                return _error(403, "Compte technique inconnu ou mot de passe invalide", 403)
            if store.over_rate(held):
                store.stats.incr("rate_limited")
                return web.json_response({"error": "too many requests"}, status=429,
                                         headers={"Retry-After": "1"})
            return await handler(request)
        return checked
    return wrap


async def health(request: web.Request) -> web.Response:
    return _ok()


async def find_structure(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await _json(request)
    wanted = (body.get("structure") or {}).get("identifiantStructure")
    found = store.structures.get(str(wanted))
    if found is None:
        return _ok(listeStructures=[], parametresRetour={"pageCourante": 1, "pages": 0,
                                                         "nbResultatsParPage": 10, "total": 0})
    return _ok(listeStructures=[{
        "idStructureCPP": found.id, "identifiantStructure": found.siret,
        "designationStructure": found.name, "typeIdentifiantStructure": "SIRET",
        "statut": "ACTIF"}], parametresRetour={"pageCourante": 1, "pages": 1,
                                                "nbResultatsParPage": 10, "total": 1})


async def services(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await _json(request)
    found = next((s for s in store.structures.values() if s.id == body.get("idStructure")), None)
    if found is None:
        return _error(20001, "Aucune structure trouvée")
    return _ok(listeServices=[{"idService": i, "codeService": c, "libelleService": c.title(),
                               "estActif": True} for i, c in found.services])


async def search(request: web.Request) -> web.Response:
    store = request.app[STORE]
    store.stats.incr("searches")
    body = await _json(request)
    since = _parse(body.get("periodeDateHeureEtatCourantDu"))
    until = _parse(body.get("periodeDateHeureEtatCourantAu"))
    statuses = body.get("statutCourant")
    if isinstance(statuses, str):
        statuses = [statuses]
    found = sorted(
        (i for i in store.invoices.values()
         if i.structure.id == body.get("idDestinataire")
         and (since is None or i.changed >= since) and (until is None or i.changed <= until)
         and (not statuses or i.status in statuses)
         and body.get("typeDemandePaiement", "FACTURE") == i.payment_kind),
        key=lambda i: (i.changed, i.id))
    if not found:
        return _error(NO_RESULT, "Aucune facture ne correspond aux critères de recherche")
    paging = body.get("paramRecherche") or {}
    per_page = max(1, min(int(paging.get("nbResultatsParPage") or 100), 1000))
    page = max(1, int(paging.get("pageResultatDemandee") or 1))
    pages = (len(found) + per_page - 1) // per_page
    shown = found[(page - 1) * per_page:page * per_page]
    return _ok(pageCourante=page, pages=pages, nbResultatsParPage=per_page, total=len(found),
               listeFactures=[i.summary() for i in shown])


async def consult(request: web.Request) -> web.Response:
    store = request.app[STORE]
    found = _invoice(store, (await _json(request)).get("identifiantFactureCPP"))
    if isinstance(found, web.Response):
        return found
    summary = found.summary()
    return _ok(facture={"idFacture": found.id, "numeroFacture": found.number,
                        "statutFacture": found.status, "modeDepot": "DEPOT_PDF_API",
                        "destinataire": {"idDestinataire": found.structure.id,
                                         "codeDestinataire": found.structure.siret},
                        "montantTotal": {"montantHtTotal": summary["montantHT"],
                                         "montantTtcTotal": summary["montantTTC"]}})


async def history(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await _json(request)
    found = _invoice(store, body.get("idFacture"))
    if isinstance(found, web.Response):
        return found
    most = int(body.get("nbResultatsMaximum") or 100)
    entries = [{"histoStatutId": c.id, "histoStatutCode": c.status,
                "histoStatutDatePassage": c.at.strftime("%Y-%m-%d %H:%M"),
                "histoStatutCommentaire": c.comment, "histoStatutUtilisateurNom": c.by,
                "histoStatutUtilisateurPrenom": ""} for c in reversed(found.history)][:most]
    return _ok(statutCourantCode=found.status,
               historiquesDesStatuts={"histoStatut": entries})


async def download(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await _json(request)
    fmt = body.get("format", "PIVOT")
    if fmt not in ("PIVOT", "PDF"):
        return _error(1, f"format {fmt!r} inconnu (PIVOT, PDF)")
    wanted = []
    for item in body.get("listeFacture") or ():
        found = _invoice(store, (item or {}).get("idFacture"))
        if isinstance(found, web.Response):
            return found
        wanted.append(found)
    if not wanted:
        return _error(1, "listeFacture est vide")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for invoice in wanted:
            if fmt == "PIVOT":
                zf.writestr(f"facture_{invoice.id}.xml", invoice.pivot())
            else:
                zf.writestr(f"facture_{invoice.id}.pdf", invoice_pdf(invoice.spec))
    encoded = base64.b64encode(out.getvalue()).decode()
    if len(encoded) > store.download_cap:
        store.stats.incr("too_large")
        return web.json_response({"error": "Request Entity Too Large"}, status=413)
    store.stats.incr("downloads")
    for invoice in wanted:
        store.stats.incr("invoices_downloaded")
        store.downloaded[invoice.id] += 1
    # Chorus Pro's encoder escapes the slashes.
    return web.Response(
        text='{"codeRetour":0,"libelle":"CODE PAR DEFAUT","fichierResultat":"'
             + encoded.replace("/", "\\/") + '"}', content_type="application/json")


async def process(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await _json(request)
    found = _invoice(store, body.get("idFacture"))
    if isinstance(found, web.Response):
        return found
    target = str(body.get("nouveauStatut") or "")
    if target in found.sent:
        store.stats.incr("duplicates")
    found.sent.add(target)
    motif = (body.get("motif") or "").strip()
    if target in NEEDS_MOTIF and not motif:
        store.stats.incr("refused_changes")
        return _error(20003, f"Le motif est obligatoire pour le statut {target}")
    if target in NEEDS_MANDATE and not (body.get("numeroDPMandat") or "").strip():
        store.stats.incr("refused_changes")
        return _error(20004, "Le numéro de DP mandat est obligatoire pour le statut MANDATEE")
    if target not in NEXT.get(found.status, ()):
        store.stats.incr("refused_changes")
        return _error(INCONSISTENT, "Incohérence au niveau du statut d'origine ou de "
                                    "destination de la facture.")
    store._record(found, target, _now(), motif or str(body.get("numeroDPMandat") or ""),
                  "Destinataire")
    store.stats.incr("status_changes")
    return _ok(idFacture=found.id, numeroFacture=found.number,
               dateTraitement=date.today().isoformat(), nouveauStatut=target)


async def possible(request: web.Request) -> web.Response:
    body = await _json(request)
    listed = NEXT.get(str(body.get("statutCourant")), ())
    if not listed:
        return _error(NO_RESULT, "Aucun statut possible")
    return _ok(listeStatutsPossiblesPourTraitement=[
        {"statutPossiblePourTraitement": s} for s in listed])


# -- control -------------------------------------------------------------------------------

async def control_schedule(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await request.json()
    wanted = [(str(w["siret"]), int(w["count"])) for w in body.get("invoices", ())]
    for code, _ in wanted:
        store.structure(code)
    return web.json_response({"scheduled": store.schedule(wanted, float(body.get("over", 0)))})


async def control_invoices(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await request.json()
    made = []
    for _ in range(int(body.get("count", 1))):
        raw = base64.b64decode(body["pivot"]) if body.get("pivot") else None
        made.append(store.add(str(body["siret"]), facturx=body.get("facturx"),
                              attachment_bytes=int(body.get("attachment_bytes", 0)),
                              raw_pivot=raw, service=body.get("service"),
                              payment_kind=str(body.get("type", "FACTURE"))).id)
    return web.json_response({"ids": made})


async def control_status(request: web.Request) -> web.Response:
    store = request.app[STORE]
    body = await request.json()
    found = _invoice(store, body.get("idFacture"))
    if isinstance(found, web.Response):
        return found
    store.set_status(found, str(body["statut"]), str(body.get("commentaire", "")))
    return web.json_response(found.summary())


async def control_invoice(request: web.Request) -> web.Response:
    store = request.app[STORE]
    found = _invoice(store, request.match_info["id"])
    if isinstance(found, web.Response):
        return found
    return web.json_response({**found.summary(), "downloads": store.downloaded[found.id],
                              "history": [{"id": c.id, "statut": c.status, "at": _stamp(c.at),
                                           "commentaire": c.comment, "par": c.by}
                                          for c in found.history]})


async def control_all(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response([{"idFacture": i.id, "numeroFacture": i.number,
                               "siret": i.structure.siret, "statut": i.status,
                               "downloads": store.downloaded[i.id],
                               "statuts": [c.status for c in i.history]}
                              for i in store.invoices.values()])


OPERATIONS: dict[str, Handler] = {
    "transverses/v1/health-check": health,
    "structures/v1/rechercher": find_structure,
    "structures/v1/rechercher/services": services,
    "factures/v1/rechercher/recipiendaire": search,
    "factures/v1/consulter/recipiendaire": consult,
    "factures/v1/consulter/historique": history,
    "factures/v1/telecharger/groupe": download,
    "factures/v1/traiter/recue": process,
    "transverses/v1/recuperer/etats/traitement": possible,
}


def build_app(*, client_id: str = "demat-broker", client_secret: str = "piste-secret",
              login: str = "TECH_DEMAT", password: str = "cpro-password",
              token_ttl: float = 3600.0, download_cap: int = 120 * 1024 * 1024,
              rate: int = 0, faults: Any = (), seed: int = 0) -> web.Application:
    stats = Stats(COUNTERS)
    store = ChorusStore(stats, client_id=client_id, client_secret=client_secret, login=login,
                        password=password, token_ttl=token_ttl, download_cap=download_cap,
                        rate=rate, seed=seed)

    async def reset() -> None:
        store.reset()

    app = create_app(stats=stats, faults=faults, seed=seed, on_reset=reset)
    app[STORE] = store
    app.router.add_post("/api/oauth/token", token)
    checked = guard(store)
    for operation, handler in OPERATIONS.items():
        app.router.add_post(f"/cpro/{operation}", checked(handler))
    app.router.add_post("/_control/schedule", control_schedule)
    app.router.add_post("/_control/invoices", control_invoices)
    app.router.add_get("/_control/invoices", control_all)
    app.router.add_get("/_control/invoices/{id}", control_invoice)
    app.router.add_post("/_control/status", control_status)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.chorus",
                                     description="Chorus Pro behind PISTE, recipient side.")
    add_common_arguments(parser)
    parser.add_argument("--client-id", default="demat-broker")
    parser.add_argument("--client-secret", default="piste-secret")
    parser.add_argument("--login", default="TECH_DEMAT", help="technical account login")
    parser.add_argument("--password", default="cpro-password")
    parser.add_argument("--token-ttl", type=float, default=3600.0,
                        help="seconds a token lives (default 3600)")
    parser.add_argument("--download-cap", type=int, default=120 * 1024 * 1024,
                        help="bytes one telecharger/groupe answer may take (413 beyond)")
    parser.add_argument("--rate", type=int, default=0,
                        help="calls per second per token before 429 (default 0: no limit)")
    args = parser.parse_args(argv)
    run_simulator(build_app(client_id=args.client_id, client_secret=args.client_secret,
                            login=args.login, password=args.password,
                            token_ttl=args.token_ttl, download_cap=args.download_cap,
                            rate=args.rate, faults=args.faults, seed=args.seed),
                  args.host, args.port)


if __name__ == "__main__":
    main()
