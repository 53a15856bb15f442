"""Test data for the ACTES format, built in code."""

from __future__ import annotations

import datetime as dt
import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker.flows.base import UploadedFile
from connectors.actes import messages as m
from connectors.actes.classification import Classification, NatureInfo
from connectors.actes.envelope import Sender
from connectors.actes.natures import NATURES
from connectors.actes.rules import ActeMetadata
from connectors.actes.xmlbind import ActesModel

TODAY = dt.date(2024, 3, 15)
CLASSIFICATION_DAY = dt.date(2023, 6, 1)
SIREN = "214400152"  # passes the Luhn check
PDF = b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(20)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(20)
XML = b"<?xml version='1.0'?><budget/>"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(50) + b"This program cannot be run in DOS mode"


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("acte.pdf", PDF)
    return buffer.getvalue()


# matière code → label: two levels everywhere, three under 1.1 and 7.10.
MATIERES = {
    "1": "Commande publique",
    "1.1": "Marchés publics",
    "1.1.1": "Marchés sur appel d'offres",
    "1.1.2": "Marchés négociés",
    "1.2": "Délégation de service public",
    "3": "Domaine et patrimoine",
    "3.2": "Aliénations",
    "5": "Institutions et vie politique",
    "5.2": "Fonctionnement des assemblées",
    "7": "Finances locales",
    "7.1": "Décisions budgétaires",
    "7.10": "Divers",
    "7.10.2": "Régies",
}
TYPOLOGY = {
    "DE": {"99_DE": "Délibération", "32_DP": "Décision de préemption", "99_SE": "Signature"},
    "AR": {"99_AR": "Acte réglementaire", "21_EP": "Enquête publique", "99_SE": "Signature"},
    "AI": {"99_AI": "Acte individuel", "43_NC": "Notification", "99_SE": "Signature"},
    "CC": {"99_DC": "Document contractuel", "11_AE": "Acte d'engagement", "99_SE": "Signature"},
    "BF": {"99_BU": "Document budgétaire", "70_DE": "Délibération", "99_SE": "Signature"},
    "AU": {"99_AU": "Autre document", "99_SE": "Signature"},
}


def classification(
    day: dt.date = CLASSIFICATION_DAY,
    *,
    typology: bool = True,
    matieres: dict[str, str] | None = None,
) -> Classification:
    labels = MATIERES if matieres is None else matieres
    return Classification(
        date=day,
        natures={
            n.code: NatureInfo(
                abbr=n.abbr, label=n.label, pj_types=TYPOLOGY[n.abbr] if typology else {}
            )
            for n in NATURES
        },
        matieres=frozenset(tuple(int(p) for p in code.split(".")) for code in labels),
        labels=dict(labels),
    )


def meta(**changes: Any) -> ActeMetadata:
    data: dict[str, Any] = {
        "nature": "DE",
        "numero": "2024_042",
        "date": "2024-03-01",
        "objet": "Vente d'un terrain communal",
        "classification": "1.1.2",
    }
    return ActeMetadata.model_validate({**data, **changes})


def upload(role: str, name: str, content: bytes, size: int | None = None) -> UploadedFile:
    return UploadedFile(role, name, len(content) if size is None else size, content[:512])


def idcl(**changes: str) -> m.IDCL:
    data = {"siren": SIREN, "departement": "044", "arrondissement": "1", "nature": "31"}
    return m.IDCL.model_validate({**data, **changes})


def sender(**changes: str) -> Sender:
    return Sender(idcl(**changes), ["actes@mairie-exemple.fr"])


def write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


Entry = tuple[tarfile.TarInfo, bytes | None]


def entry(
    name: str,
    content: bytes = b"",
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    size: int | None = None,
) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(content) if size is None else size
    return info, content if kind == tarfile.REGTYPE else None


def tar_gz(path: Path, entries: Sequence[Entry]) -> Path:
    """An archive exactly as given, hostile entries included."""
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def acte(**changes: Any) -> m.Acte:
    data: dict[str, Any] = {
        "date": dt.date(2024, 3, 1),
        "numero_interne": "2024_042",
        "code_nature": 1,
        "matiere1": 1,
        "matiere2": 1,
        "matiere3": 2,
        "objet": "Vente d'un terrain communal",
        "classification_date": CLASSIFICATION_DAY,
        "document": m.FichierSigne(
            nom_fichier="99_DE-044-214400152-20240301-2024_042-DE-1-1_1.pdf"
        ),
        "annexes": [
            m.FichierSigne(nom_fichier="99_SE-044-214400152-20240301-2024_042-DE-1-1_2.xml")
        ],
        "document_papier": "N",
    }
    return m.Acte.model_validate({**data, **changes})


ID_ACTE = "044-214400152-20240301-2024_042-DE"


def every_message() -> list[ActesModel]:
    """One of each message and envelope, filled as the project fills them."""
    day = dt.date(2024, 3, 20)
    pdf = m.FichierSigne(nom_fichier="044-214400152-20240301-2024_042-DE-2-1_1.pdf")
    ref = {"id_acte": ID_ACTE, "date_courrier_pref": day}
    received = m.DonneesActe.model_validate({**dict(acte()), "annexes": [], "nombre_annexes": 0})
    envelope = m.EnveloppeCLMISILL(
        emetteur=idcl(),
        referent=m.Referent(
            nom="Service des assemblées",
            telephone="0240000000",
            email="assemblees@mairie-exemple.fr",
        ),
        adresses_retour=["actes@mairie-exemple.fr", "tdt.retour@exemple-tdt.fr"],
        formulaires=[m.FichierSigne(nom_fichier="044-214400152-20240301-2024_042-DE-1-1_0.xml")],
    )
    return [
        acte(),
        acte(
            code_nature=5,
            matiere1=7,
            matiere2=1,
            matiere3=None,
            document_papier=None,
            precedent_id_acte="044-214400152-20240101-2024_001-BF",
            nombre_annexes=3,
        ),
        m.ARActe(
            id_acte=ID_ACTE,
            date_reception=day,
            acte_recu=received,
            classification_date_en_cours=CLASSIFICATION_DAY,
        ),
        m.AnomalieActe(
            date=day,
            nature="002",
            detail="ODT-VERIF-01 : classification pas à jour",
            acte_recu=received,
            classification_date_en_cours=CLASSIFICATION_DAY,
        ),
        m.CourrierSimple(**ref, document=pdf),
        m.ReponseCourrierSimple(**ref, document=pdf),
        m.DemandePieceComplementaire(
            **ref, description_pieces="Le plan de situation", document=pdf
        ),
        m.ARDemandePieceComplementaire(**ref),
        m.RefusPieceComplementaire(**ref, document=pdf),
        m.PieceComplementaire(**ref, documents=[pdf, m.FichierSigne(nom_fichier="plan.pdf")]),
        m.ARPieceComplementaire(date_reception=day, infos=m.CourrierRef(**ref)),
        m.LettreObservations(**ref, motif="Incompétence de l'auteur", document=pdf),
        m.ARLettreObservations(**ref),
        m.RejetLettreObservations(**ref, document=pdf),
        m.ReponseLettreObservations(**ref, document=pdf),
        m.ARReponseRejetLettreObservations(date_reception=day, infos=m.CourrierRef(**ref)),
        m.DefereTA(
            id_acte=ID_ACTE,
            date_depot=day,
            nature_illegalite="Vice de procédure",
            pieces_jointes=[pdf],
        ),
        m.Annulation(id_acte=ID_ACTE),
        m.ARAnnulation(id_acte=ID_ACTE, date_reception=day),
        m.DemandeClassification(date_classification=CLASSIFICATION_DAY),
        m.DemandeClassification(),
        classification(),
        m.ReponseClassificationSansChangement(date_classification=CLASSIFICATION_DAY),
        envelope,
        m.EnveloppeMISILLCL(
            sous_prefecture=m.ServiceId(departement="044", arrondissement="1"),
            formulaires=[
                m.FichierSigne(nom_fichier="044-214400152-20240301-2024_042-DE-2-1_0.xml")
            ],
            destinataire_siren=SIREN,
        ),
        m.EnveloppeMISILLCL(
            prefecture=m.ServiceId(departement="02A"), formulaires=[pdf], destinataire_siren=SIREN
        ),
        m.AnomalieEnveloppe(
            date=day, nature="001", detail="Enveloppe illisible", enveloppe_recue=envelope
        ),
    ]
