"""The flows this build serves, by name."""

from broker.flows.actes import ACTES, COURRIERS
from broker.flows.base import Flow
from broker.flows.depot import DEPOT

FLOWS: dict[str, Flow] = {flow.name: flow for flow in (DEPOT, ACTES, COURRIERS)}
