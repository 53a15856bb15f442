"""Declarative flow definitions, one module each."""

from broker.flows.base import FileRule, Flow, Intake, Problem, Step, UploadedFile
from broker.flows.depot import DEPOT

FLOWS: dict[str, Flow] = {flow.name: flow for flow in (DEPOT,)}

__all__ = ["DEPOT", "FLOWS", "FileRule", "Flow", "Intake", "Problem", "Step", "UploadedFile"]
