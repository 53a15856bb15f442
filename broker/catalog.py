"""The catalog: the flows a build serves and the connectors that run their steps.

The composition root (``broker.serve``, ``broker.cli``) builds it from the flows of
``broker/flows/`` and the connectors of ``connectors/``; the core only reads it. It
is checked when built: every step of every flow must resolve to a connector that
declares it serves that (flow, step), or the process stops naming them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from broker.connector import Connector
from broker.entity_settings import SettingsCatalog, problems_of
from broker.flows.base import Flow, Step


class CatalogError(ValueError):
    """The flows and connectors do not fit together."""


def _option_problems(flow: Flow, step: Step, connector: Connector) -> list[str]:
    model = getattr(connector, "options", None)
    where = f"flow {flow.name} step {step.name}: options for {connector.name}"
    if model is None:
        return [f"{where}: the connector takes none"] if step.options else []
    try:
        model.model_validate(dict(step.options))
    except ValidationError as exc:
        return [f"{where}: " + "; ".join(f"{field or 'value'}: {what}"
                                         for field, what in problems_of(exc))]
    return []


@dataclass(frozen=True)
class Catalog:
    flows: Mapping[str, Flow]
    connectors: Mapping[str, Connector]
    settings: SettingsCatalog

    @classmethod
    def build(cls, flows: Iterable[Flow], connectors: Iterable[Connector]) -> Catalog:
        by_flow: dict[str, Flow] = {}
        for flow in flows:
            if by_flow.setdefault(flow.name, flow) is not flow:
                raise CatalogError(f"two flows are named {flow.name!r}")
        by_name: dict[str, Connector] = {}
        for connector in connectors:
            if by_name.setdefault(connector.name, connector) is not connector:
                raise CatalogError(f"two connectors are named {connector.name!r}")
        problems = []
        for flow in by_flow.values():
            for step in flow.steps:
                found = by_name.get(step.connector)
                if found is None:
                    known = ", ".join(sorted(by_name)) or "none"
                    problems.append(f"flow {flow.name} step {step.name}: no connector "
                                    f"{step.connector!r} (connectors: {known})")
                elif (flow.name, step.name) not in found.serves:
                    served = ", ".join(f"{f}/{s}" for f, s in sorted(found.serves)) or "nothing"
                    problems.append(f"flow {flow.name} step {step.name}: connector "
                                    f"{step.connector!r} does not serve it (it serves {served})")
                else:
                    problems += _option_problems(flow, step, found)
            if flow.classification_by and flow.classification_by not in by_flow:
                problems.append(f"flow {flow.name}: its classification comes from flow "
                                f"{flow.classification_by!r}, which is not in the catalog")
        if problems:
            raise CatalogError("; ".join(problems))
        try:
            settings = SettingsCatalog.of(by_name.values())
        except ValueError as exc:
            raise CatalogError(str(exc)) from exc
        return cls(by_flow, by_name, settings)

    def connector_for(self, flow: str, step: str) -> Connector:
        return self.connectors[self.flows[flow].step(step).connector]
