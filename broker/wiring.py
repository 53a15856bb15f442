"""The composition root's catalog: the flows this build serves and their connectors.

Adding a flow: ``broker/flows/<flow>.py``, its connectors in ``connectors/<family>/``,
and one line here. Nothing in the engine, worker, relay or API changes.
"""

from __future__ import annotations

from broker.catalog import Catalog
from broker.flows.actes import ACTES, COURRIERS
from broker.flows.classification import CLASSIFICATION
from broker.flows.depot import DEPOT
from broker.flows.facture import FACTURE
from broker.flows.helios import HELIOS, RETOURS
from connectors.actes.connector import TdtActesConnector
from connectors.callback.connector import CallbackConnector
from connectors.chorus.connector import ChorusConnector
from connectors.depot.connector import DepotConnector
from connectors.helios.connector import TdtHeliosConnector
from connectors.parapheur.connector import ParapheurConnector
from connectors.sae.connector import SaeConnector


def catalog() -> Catalog:
    return Catalog.build(
        flows=[DEPOT, ACTES, COURRIERS, CLASSIFICATION, HELIOS, RETOURS, FACTURE],
        connectors=[DepotConnector(), ParapheurConnector(), TdtActesConnector(), SaeConnector(),
                    TdtHeliosConnector(), CallbackConnector(), ChorusConnector()],
    )
