"""ACTES messages as pydantic models: builders to XML bytes and lenient readers from bytes.

Field order follows the schema's sequences (see ``xmlbind``). Readers keep what the
real platform sends even outside the schema (anomaly natures such as 999).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from lxml import etree
from pydantic import Field, model_validator

from broker.flows.base import Problem
from broker.xmlsafe import parse_bytes
from connectors.actes.classification import Classification
from connectors.actes.problems import MessageError
from connectors.actes.xmlbind import ENCODINGS, ActesModel, X, local

# -- parts ----------------------------------------------------------------------------------


class FichierSigne(ActesModel):
    """A file named in a message, with its detached signature when there is one."""

    nom_fichier: Annotated[str, X("NomFichier")]
    signature: Annotated[str | None, X("Signature")] = None


class Referent(ActesModel):
    nom: Annotated[str | None, X("Nom")] = None
    telephone: Annotated[str | None, X("Telephone")] = None
    email: Annotated[str | None, X("Email")] = None


class IDCL(ActesModel):
    """The collectivité sending: SIREN, département, arrondissement, authority type."""

    siren: Annotated[str, X("@insee:SIREN")]
    departement: Annotated[str, X("@Departement")]
    arrondissement: Annotated[str, X("@Arrondissement")]
    nature: Annotated[str, X("@Nature")]


class ServiceId(ActesModel):
    """A préfecture, sous-préfecture or SGAR (arrondissement only for a sous-préfecture)."""

    departement: Annotated[str, X("@Departement")]
    arrondissement: Annotated[str | None, X("@Arrondissement")] = None


class DonneesActe(ActesModel):
    """An act as transmitted (``Acte``) and as echoed back (``ActeRecu``)."""

    date: Annotated[dt.date, X("@Date")]
    numero_interne: Annotated[str, X("@NumeroInterne")]
    code_nature: Annotated[int, X("@CodeNatureActe")]
    # Levels 1 and 2 are required; a real anomaly skips level 4, so each level stands alone.
    matiere1: Annotated[int, X("CodeMatiere1/@CodeMatiere")]
    matiere2: Annotated[int, X("CodeMatiere2/@CodeMatiere")]
    matiere3: Annotated[int | None, X("CodeMatiere3/@CodeMatiere")] = None
    matiere4: Annotated[int | None, X("CodeMatiere4/@CodeMatiere")] = None
    matiere5: Annotated[int | None, X("CodeMatiere5/@CodeMatiere")] = None
    objet: Annotated[str, X("Objet")]
    precedent_id_acte: Annotated[str | None, X("PrecedentIdentifiantActe/@IDActe")] = None
    classification_date: Annotated[dt.date, X("ClassificationDateVersion")]
    document: Annotated[FichierSigne, X("Document")]
    # Total number of annexes, paper ones included; the electronic count when not given.
    nombre_annexes: Annotated[int, X("Annexes/@Nombre")]
    annexes: Annotated[list[FichierSigne], X("Annexes/Annexe*")] = Field(default_factory=list)
    # "O" when paper annexes follow by post; None is written as xsi:nil.
    document_papier: Annotated[str | None, X("DocumentPapier", nillable=True)] = None

    @model_validator(mode="before")
    @classmethod
    def _count_annexes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("nombre_annexes") is None:
            data = {**data, "nombre_annexes": len(data.get("annexes") or ())}
        return data

    @property
    def codes(self) -> tuple[int, ...]:
        levels = (self.matiere1, self.matiere2, self.matiere3, self.matiere4, self.matiere5)
        return tuple(c for c in levels if c is not None)

    @property
    def classification(self) -> str:
        """The matière code as people write it, e.g. ``1.1.2``."""
        return ".".join(str(c) for c in self.codes)

    @staticmethod
    def matiere_fields(code: tuple[int, ...]) -> dict[str, int]:
        """``(1, 1, 2)`` → ``{"matiere1": 1, "matiere2": 1, "matiere3": 2}``."""
        return {f"matiere{level}": value for level, value in enumerate(code, start=1)}


class CourrierRef(ActesModel):
    """What every préfecture letter and its answers carry (``DonneesCourrierPref``)."""

    id_acte: Annotated[str, X("@IDActe")]
    date_courrier_pref: Annotated[dt.date, X("@DateCourrierPref")]


class _Anomalie(ActesModel):
    date: Annotated[dt.date, X("Date")]
    # Kept as received: @CTES sends codes outside the schema's list (999).
    nature: Annotated[str, X("Nature")]
    detail: Annotated[str | None, X("Detail")] = None

    @property
    def detail_code(self) -> str | None:
        """The platform's check code opening the detail, e.g. ``ODT-VERIF-17``."""
        found = re.match(r"\s*([A-Z]+(?:-[A-Z]+)*-[0-9]+)\b", self.detail or "")
        return found.group(1) if found else None


class _WithDocument(CourrierRef):
    document: Annotated[FichierSigne, X("Document")]


# -- 1: the act ----------------------------------------------------------------------------


class Acte(DonneesActe, code="1-1"):
    """1-1, collectivité: the act."""


class _Echo(ActesModel):
    """The act as the préfecture received it, and its current classification date."""

    # Hand-made acknowledgements use Acte instead of ActeRecu: read either.
    acte_recu: Annotated[DonneesActe | None, X("ActeRecu|Acte")] = None
    classification_date_en_cours: Annotated[
        dt.date | None, X("ClassificationDateVersionEnCours")
    ] = None


class ARActe(_Echo, code="1-2"):
    """1-2, préfecture: the act is received, under its IDActe."""

    id_acte: Annotated[str, X("@IDActe")]
    date_reception: Annotated[dt.date, X("@DateReception")]


class AnomalieActe(_Echo, _Anomalie, code="1-3"):
    """1-3, préfecture: the act is refused (no IDActe)."""


# -- 2 to 5: letters from the préfecture and the answers -----------------------------------


class CourrierSimple(_WithDocument, code="2-1"):
    """2-1, préfecture: a letter about an act."""


class ReponseCourrierSimple(_WithDocument, code="2-2"):
    """2-2, collectivité: the answer to a letter."""


class DemandePieceComplementaire(CourrierRef, code="3-1"):
    """3-1, préfecture: further documents are requested."""

    description_pieces: Annotated[str, X("DescriptionPieces")]
    document: Annotated[FichierSigne, X("Document")]


class ARDemandePieceComplementaire(CourrierRef, code="3-2"):
    """3-2, collectivité: the request is received."""


class RefusPieceComplementaire(_WithDocument, code="3-3"):
    """3-3, collectivité: the documents will not be sent."""


class PieceComplementaire(CourrierRef, code="3-4"):
    """3-4, collectivité: the documents requested."""

    documents: Annotated[list[FichierSigne], X("Documents/Document*")]


class ARPieceComplementaire(ActesModel, code="3-5"):
    """3-5, préfecture: the documents (or the refusal) are received."""

    date_reception: Annotated[dt.date, X("@DateReception")]
    infos: Annotated[CourrierRef, X("InfosCourrierPref")]


class LettreObservations(CourrierRef, code="4-1"):
    """4-1, préfecture: a letter of observations."""

    motif: Annotated[str, X("Motif")]
    document: Annotated[FichierSigne, X("Document")]


class ARLettreObservations(CourrierRef, code="4-2"):
    """4-2, collectivité: the letter is received."""


class RejetLettreObservations(_WithDocument, code="4-3"):
    """4-3, collectivité: the letter will not be answered."""


class ReponseLettreObservations(_WithDocument, code="4-4"):
    """4-4, collectivité: the answer to the letter."""


class ARReponseRejetLettreObservations(ARPieceComplementaire, code="4-5"):
    """4-5, préfecture: the answer (or the refusal) is received."""


class DefereTA(ActesModel, code="5-1"):
    """5-1, préfecture: the act is referred to the administrative court."""

    id_acte: Annotated[str, X("@IDActe")]
    date_depot: Annotated[dt.date, X("DateDepot")]
    nature_illegalite: Annotated[str, X("NatureIllegalite")]
    pieces_jointes: Annotated[list[FichierSigne], X("PiecesJointes/PieceJointe*")] = Field(
        default_factory=list
    )


# -- 6: cancellation, 7: classification -----------------------------------------------------


class Annulation(ActesModel, code="6-1"):
    """6-1, collectivité: the transmission of an act is cancelled."""

    id_acte: Annotated[str, X("@IDActe")]


class ARAnnulation(Annulation, code="6-2"):
    """6-2, préfecture: the cancellation is received."""

    date_reception: Annotated[dt.date, X("@DateReception")]


class DemandeClassification(ActesModel, code="7-1"):
    """7-1, collectivité: the current classification is requested."""

    # The classification the entity uses, when it has one.
    date_classification: Annotated[dt.date | None, X("DateClassification")] = None


RetourClassification = Classification


class ReponseClassificationSansChangement(ActesModel, code="7-3"):
    """7-3, préfecture: the classification used is current."""

    date_classification: Annotated[dt.date, X("DateClassification")]


# -- envelopes -----------------------------------------------------------------------------


class EnveloppeCLMISILL(ActesModel, root="EnveloppeCLMISILL"):
    """Envelope of a sending from the collectivité (through its TdT) to @CTES."""

    emetteur: Annotated[IDCL, X("Emetteur/IDCL")]
    referent: Annotated[Referent | None, X("Emetteur/Referent")] = None
    adresses_retour: Annotated[list[str], X("AdressesRetour/Email*")]
    formulaires: Annotated[list[FichierSigne], X("FormulairesEnvoyes/Formulaire*")]


class EnveloppeMISILLCL(ActesModel, root="EnveloppeMISILLCL"):
    """Envelope of a sending from the préfecture: exactly one of the three emitters."""

    sgar: Annotated[ServiceId | None, X("Emetteur/IDSGAR")] = None
    prefecture: Annotated[ServiceId | None, X("Emetteur/IDPref")] = None
    sous_prefecture: Annotated[ServiceId | None, X("Emetteur/IDSousPref")] = None
    referent: Annotated[Referent | None, X("Emetteur/Referent")] = None
    formulaires: Annotated[list[FichierSigne], X("FormulairesEnvoyes/Formulaire*")]
    destinataire_siren: Annotated[str, X("Destinataire/@insee:SIREN")]

    @property
    def emitter(self) -> ServiceId | None:
        return self.sous_prefecture or self.prefecture or self.sgar


class AnomalieEnveloppe(_Anomalie, root="AnomalieEnveloppe"):
    """Préfecture: an envelope it could not accept."""

    enveloppe_recue: Annotated[EnveloppeCLMISILL | None, X("EnveloppeRecue")] = None


# -- dispatch -------------------------------------------------------------------------------

MESSAGE_TYPES: tuple[type[ActesModel], ...] = (
    Acte,
    ARActe,
    AnomalieActe,
    CourrierSimple,
    ReponseCourrierSimple,
    DemandePieceComplementaire,
    ARDemandePieceComplementaire,
    RefusPieceComplementaire,
    PieceComplementaire,
    ARPieceComplementaire,
    LettreObservations,
    ARLettreObservations,
    RejetLettreObservations,
    ReponseLettreObservations,
    ARReponseRejetLettreObservations,
    DefereTA,
    Annulation,
    ARAnnulation,
    DemandeClassification,
    Classification,
    ReponseClassificationSansChangement,
    EnveloppeCLMISILL,
    EnveloppeMISILLCL,
    AnomalieEnveloppe,
)
BY_ROOT = {cls.ROOT: cls for cls in MESSAGE_TYPES}
BY_CODE = {cls.CODE: cls for cls in MESSAGE_TYPES if cls.CODE}
ENVELOPES = (EnveloppeCLMISILL, EnveloppeMISILLCL)


def to_xml(message: ActesModel, encoding: str = "ISO-8859-1") -> bytes:
    """The message as a document, declared in ``encoding`` (ISO-8859-1 as @CTES, or UTF-8).

    Characters outside ISO-8859-1 are written as character references.
    """
    if encoding.upper() not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if not message.ROOT:
        raise TypeError(f"{type(message).__name__} is a part of a message, not a message")
    data = etree.tostring(
        message.to_element(), xml_declaration=True, encoding=encoding.upper(), pretty_print=True
    )
    assert isinstance(data, bytes)  # an encoding was given, so never text
    return data


def read_element(root: etree._Element) -> ActesModel:
    """The model for a parsed message, chosen by its root element."""
    cls = BY_ROOT.get(local(root))
    if cls is None:
        message = f"unknown ACTES message: root element {local(root)!r}"
        raise MessageError([Problem(local(root) or "message", message)])
    return cls.from_element(root)


def read_message(data: bytes) -> ActesModel:
    """Any ACTES message or envelope from its bytes (ISO-8859-1, UTF-8 or as declared).

    Raises ``XmlError`` (with its line) for unreadable XML and ``MessageError`` for a
    message that lacks what its type needs.
    """
    return read_element(parse_bytes(data, encodings=ENCODINGS))
