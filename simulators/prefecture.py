"""The préfecture (@CTES and the contrôle de légalité) behind the simulated TdT.

It reads each archive the TdT sends with the project's ACTES rules
(``connectors.actes.envelope`` reader, ``rules.check_act``) and answers what the
real one does: an ARActe with the IDActe, or an AnomalieActe (an act stamped with
an outdated classification gets Nature 002 "ODT-VERIF-01"), or an AnomalieEnveloppe
for an archive it cannot read. It also acknowledges cancellations (ARAnnulation),
serves its classification (RetourClassification) and writes letters about an act
(2-1 courrier simple, 3-1 demande de pièces, 4-1 lettre d'observations, 5-1 déféré).

The TdT side is here too (:func:`build_act_archive`): S²LOW builds the archive from
the fields the collectivité posts, and so does the simulator.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from broker.flows.base import Problem, UploadedFile
from broker.sniff import HEAD_BYTES
from connectors.actes import names
from connectors.actes.classification import Classification, NatureInfo
from connectors.actes.envelope import (
    ArchiveContents,
    EnvelopeError,
    Sender,
    build_acte_archive,
    build_archive,
    read_archive,
    write_archive,
)
from connectors.actes.messages import (
    IDCL,
    Acte,
    Annulation,
    AnomalieActe,
    AnomalieEnveloppe,
    ARActe,
    ARAnnulation,
    CourrierSimple,
    DefereTA,
    DemandePieceComplementaire,
    EnveloppeCLMISILL,
    EnveloppeMISILLCL,
    FichierSigne,
    LettreObservations,
    ServiceId,
    to_xml,
)
from connectors.actes.natures import NATURES
from connectors.actes.rules import ActeMetadata, check_act
from connectors.actes.xmlbind import ActesModel

COURRIER_TYPES = ("2-1", "3-1", "4-1", "5-1")
ITC = "SLO"  # the TdT's trigram in archive names
APP = "TACT"  # S²LOW's application code on test platforms
STALE_CLASSIFICATION = (
    "002",
    "ODT-VERIF-01 : Votre acte a été transmis avec une date de classification qui n'est pas à jour",
)
NON_COMPLIANT = "001"
BAD_ENVELOPE = "001"
_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"

# A small classification: every level-1 matière and a few level-2 ones, with labels.
_MATIERES = {
    "1": "Commande publique",
    "1.1": "Marchés publics",
    "1.2": "Délégation de service public",
    "1.7": "Actes spéciaux et divers",
    "2": "Urbanisme",
    "2.1": "Documents d'urbanisme",
    "2.2": "Actes relatifs au droit d'occupation ou d'utilisation des sols",
    "3": "Domaine et patrimoine",
    "3.1": "Acquisitions",
    "3.2": "Aliénations",
    "4": "Fonction publique",
    "4.1": "Personnels titulaires et stagiaires de la FPT",
    "5": "Institutions et vie politique",
    "5.1": "Election exécutif",
    "5.2": "Fonctionnement des assemblées",
    "6": "Libertés publiques et pouvoirs de police",
    "6.1": "Police municipale",
    "7": "Finances locales",
    "7.1": "Décisions budgétaires",
    "7.10": "Divers",
    "8": "Domaines de compétences par thèmes",
    "8.1": "Enseignement",
    "9": "Autres domaines de compétences",
    "9.1": "Autres domaines de compétences des communes",
}


@dataclass(frozen=True)
class Authority:
    """The collectivité the TdT account (client certificate) belongs to."""

    siren: str = "214400152"
    departement: str = "044"
    arrondissement: str = "1"
    nature: str = "31"  # authority type code of the envelope's IDCL
    email: str = "actes@collectivite.example.org"

    @property
    def idcl(self) -> IDCL:
        return IDCL(
            siren=self.siren,
            departement=self.departement,
            arrondissement=self.arrondissement,
            nature=self.nature,
        )

    @property
    def sender(self) -> Sender:
        return Sender(self.idcl, [self.email], itc=ITC, app=APP)

    @property
    def service(self) -> str:
        """The préfecture's service code in envelope names (``PREF044``)."""
        return f"PREF{self.departement}" if self.departement.isdigit() else "PREF020"


@dataclass(frozen=True)
class SubmittedAct:
    """What ``actes_transac_create.php`` received, files saved on disk."""

    nature_code: int
    number: str
    subject: str
    decision_date: dt.date
    classification: tuple[str, ...]
    type_acte: str
    acte: tuple[str, Path]
    annexes: tuple[tuple[str, Path], ...] = ()
    type_pj: tuple[str, ...] = ()
    document_papier: bool = False
    en_attente: bool = False


def classification_of(day: dt.date) -> Classification:
    natures = {
        n.code: NatureInfo(abbr=n.abbr, label=n.label, pj_types=n.default_pj_types) for n in NATURES
    }
    codes = frozenset(tuple(int(p) for p in code.split(".")) for code in _MATIERES)
    return Classification(date=day, natures=natures, matieres=codes, labels=dict(_MATIERES))


def build_act_archive(
    authority: Authority,
    act: SubmittedAct,
    classification_date: dt.date,
    serial: int,
    dest_dir: Path,
) -> tuple[str, Path]:
    """The TdT's archive for a posted act: (IDActe, path). ``ValueError`` says what is wrong."""
    meta = ActeMetadata(
        nature=act.nature_code,
        numero=act.number,
        date=act.decision_date,
        objet=act.subject,
        classification=".".join(act.classification),
        type_piece=act.type_acte,
        type_pj=list(act.type_pj) if act.annexes else None,
    )
    built = build_acte_archive(
        dest_dir,
        sender=authority.sender,
        meta=meta,
        classification_date=classification_date,
        act=act.acte[1],
        annexes=[path for _name, path in act.annexes],
        serial=serial,
    )
    assert built.id_acte is not None
    return built.id_acte, built.path


def build_cancel_archive(authority: Authority, id_acte: str, serial: int, dest_dir: Path) -> Path:
    """The TdT's archive of a 6-1 Annulation."""
    built = build_archive(
        dest_dir, sender=authority.sender, message=Annulation(id_acte=id_acte), serial=serial
    )
    return built.path


@dataclass(frozen=True)
class Verdict:
    """The préfecture's answer to one archive."""

    acknowledged: bool
    xml: bytes
    id_acte: str | None = None
    nature: str = ""
    detail: str = ""
    envelope: bool = False  # an AnomalieEnveloppe rather than an AnomalieActe


def _uploaded(contents: ArchiveContents, acte: Acte) -> list[UploadedFile]:
    roles = {acte.document.nom_fichier: "acte"}
    roles.update({a.nom_fichier: "annexe" for a in acte.annexes})
    found = []
    for member in contents.files:
        with member.path.open("rb") as stream:
            head = stream.read(HEAD_BYTES)
        found.append(UploadedFile(roles.get(member.name, "other"), member.name, member.size, head))
    return found


def _type_code(name: str) -> str | None:
    try:
        parsed = names.parse_name(name)
    except ValueError:
        return None
    return parsed.type_code if isinstance(parsed, names.MessageFileName) else None


def _metadata(acte: Acte) -> ActeMetadata:
    annex_types = [_type_code(a.nom_fichier) for a in acte.annexes]
    return ActeMetadata(
        nature=acte.code_nature,
        numero=acte.numero_interne,
        date=acte.date,
        objet=acte.objet,
        classification=acte.classification,
        type_piece=_type_code(acte.document.nom_fichier),
        type_pj=[t or "" for t in annex_types] if acte.annexes else None,
    )


def _describe(problems: Sequence[Problem]) -> str:
    return "; ".join(f"{p.field} : {p.message}" for p in problems)


class Prefecture:
    """Answers the TdT's archives for one authority."""

    def __init__(self, authority: Authority, classification_date: dt.date) -> None:
        self.authority = authority
        self.classification_date = classification_date

    @property
    def classification(self) -> Classification:
        return classification_of(self.classification_date)

    def retour_classification(self, day: dt.date) -> bytes:
        """A RetourClassification of ``day`` (the TdT serves its own copy's date)."""
        return to_xml(classification_of(day))

    def examine(self, archive: Path, today: dt.date) -> Verdict:
        """ARActe, AnomalieActe or AnomalieEnveloppe for one act's archive."""
        with tempfile.TemporaryDirectory(prefix="prefecture-") as folder:
            try:
                contents = read_archive(archive, Path(folder))
            except EnvelopeError as exc:
                return self._envelope_anomaly(exc.problems, None, today)
            acts = [m.message for m in contents.messages if isinstance(m.message, Acte)]
            if not acts:
                problem = Problem("archive", "no Acte (1-1) message in the envelope")
                return self._envelope_anomaly([problem], contents.envelope, today)
            acte = acts[0]
            if acte.classification_date != self.classification_date:
                return self._act_anomaly(acte, *STALE_CLASSIFICATION, today)
            try:
                meta = _metadata(acte)
            except ValidationError as exc:
                return self._act_anomaly(acte, NON_COMPLIANT, f"Acte non conforme : {exc}", today)
            problems = check_act(meta, _uploaded(contents, acte), self.classification, today)
        if problems:
            detail = f"Acte non conforme : {_describe(problems)}"
            return self._act_anomaly(acte, NON_COMPLIANT, detail, today)
        id_acte = names.id_acte(
            self.authority.departement,
            self.authority.siren,
            acte.date,
            acte.numero_interne,
            acte.code_nature,
        )
        ar = ARActe(
            id_acte=id_acte,
            date_reception=today,
            acte_recu=acte,
            classification_date_en_cours=self.classification_date,
        )
        return Verdict(True, to_xml(ar), id_acte=id_acte)

    def _act_anomaly(self, acte: Acte, nature: str, detail: str, today: dt.date) -> Verdict:
        message = AnomalieActe(
            date=today,
            nature=nature,
            detail=detail,
            acte_recu=acte,
            classification_date_en_cours=self.classification_date,
        )
        return Verdict(False, to_xml(message), nature=nature, detail=detail)

    def _envelope_anomaly(
        self, problems: Sequence[Problem], envelope: object, today: dt.date
    ) -> Verdict:
        detail = f"Enveloppe illisible : {_describe(problems)}"
        received = envelope if isinstance(envelope, EnveloppeCLMISILL) else None
        message = AnomalieEnveloppe(
            date=today, nature=BAD_ENVELOPE, detail=detail, enveloppe_recue=received
        )
        return Verdict(False, to_xml(message), nature=BAD_ENVELOPE, detail=detail, envelope=True)

    def ar_annulation(self, archive: Path, today: dt.date) -> tuple[str, bytes]:
        """(IDActe, ARAnnulation) for the TdT's 6-1 archive."""
        with tempfile.TemporaryDirectory(prefix="prefecture-") as folder:
            contents = read_archive(archive, Path(folder))
        cancels = [m.message for m in contents.messages if isinstance(m.message, Annulation)]
        if not cancels:
            raise EnvelopeError([Problem("archive", "no Annulation (6-1) message")])
        id_acte = cancels[0].id_acte
        return id_acte, to_xml(ARAnnulation(id_acte=id_acte, date_reception=today))

    def courrier(
        self, id_acte: str, kind: str, today: dt.date, serial: int, dest_dir: Path
    ) -> Path:
        """A letter about an act, as the archive the TdT keeps (envelope, message, PDF)."""
        act = names.parse_id_acte(id_acte)
        base = names.message_base(act.departement, act.siren, kind, act)
        message_name, pdf_name = names.file_name(base, 1, "xml"), names.file_name(base, 2, "pdf")
        document = FichierSigne(nom_fichier=pdf_name)
        message: ActesModel
        if kind == "2-1":
            message = CourrierSimple(id_acte=id_acte, date_courrier_pref=today, document=document)
        elif kind == "3-1":
            message = DemandePieceComplementaire(
                id_acte=id_acte,
                date_courrier_pref=today,
                document=document,
                description_pieces="Merci de transmettre le rapport de présentation.",
            )
        elif kind == "4-1":
            message = LettreObservations(
                id_acte=id_acte,
                date_courrier_pref=today,
                document=document,
                motif="Incompétence de l'auteur de l'acte.",
            )
        elif kind == "5-1":
            message = DefereTA(
                id_acte=id_acte,
                date_depot=today,
                pieces_jointes=[document],
                nature_illegalite="Vice de procédure.",
            )
        else:
            raise ValueError(f"courrier type must be one of {', '.join(COURRIER_TYPES)}")
        envelope_name = names.prefecture_envelope_name(
            APP, self.authority.service, act.siren, today, serial
        )
        envelope = EnveloppeMISILLCL(
            prefecture=ServiceId(departement=act.departement),
            formulaires=[FichierSigne(nom_fichier=message_name)],
            destinataire_siren=act.siren,
        )
        path = dest_dir / names.archive_name(ITC, envelope_name)
        write_archive(
            path,
            [
                (envelope_name, to_xml(envelope)),
                (message_name, to_xml(message)),
                (pdf_name, _PDF),
            ],
        )
        return path
