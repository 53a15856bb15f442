"""i-Parapheur: have a document signed and bring the signed PDF back (v4 SOAP web services)."""

from connectors.parapheur.client import ParapheurClient
from connectors.parapheur.connector import (
    ParapheurConnector,
    ParapheurSettings,
    document_to_sign,
    dossier_id_for,
    parapheur_settings,
)
from connectors.parapheur.soap import (
    Attachment,
    Dossier,
    DossierExists,
    DossierUnknown,
    LogDossier,
    MessageRetour,
    NewDossier,
    ParapheurError,
    RetourKO,
    SoapFault,
)

__all__ = [
    "Attachment",
    "Dossier",
    "DossierExists",
    "DossierUnknown",
    "LogDossier",
    "MessageRetour",
    "NewDossier",
    "ParapheurClient",
    "ParapheurConnector",
    "ParapheurError",
    "ParapheurSettings",
    "RetourKO",
    "SoapFault",
    "document_to_sign",
    "dossier_id_for",
    "parapheur_settings",
]
