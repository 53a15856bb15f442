"""The catalog: every step of every flow resolves to a connector that serves it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from broker.catalog import Catalog, CatalogError
from broker.connector import ConnectorSettings, Done, Outcome, StepContext
from broker.flows.base import FileRule, Flow, Step
from broker.wiring import catalog


class Meta(BaseModel):
    pass


class EchoSettings(ConnectorSettings):
    url: str = "http://echo"


class Echo:
    name = "echo"
    steps = frozenset({"say"})
    settings_key = "echo"
    settings = EchoSettings

    def __init__(self, serves: frozenset[tuple[str, str]]) -> None:
        self.serves = serves

    async def run(self, ctx: StepContext) -> Outcome:
        return Done()


def flow(*steps: Step) -> Flow:
    return Flow(name="echoes", description="", files={"document": FileRule(min=1)},
                metadata_model=Meta, steps=list(steps))


def test_a_flow_and_a_connector_declared_together_resolve() -> None:
    built = Catalog.build([flow(Step("say", "echo"))], [Echo(frozenset({("echoes", "say")}))])
    assert built.connector_for("echoes", "say").name == "echo"
    assert built.settings.models == {"echo": EchoSettings}


def test_a_step_without_its_connector_stops_the_start_naming_flow_and_step() -> None:
    with pytest.raises(CatalogError) as caught:
        Catalog.build([flow(Step("say", "echo"), Step("shout", "megaphone"))],
                      [Echo(frozenset({("echoes", "say")}))])
    assert str(caught.value) == ("flow echoes step shout: no connector 'megaphone' "
                                 "(connectors: echo)")


def test_a_connector_that_does_not_declare_the_step_is_refused() -> None:
    with pytest.raises(CatalogError) as caught:
        Catalog.build([flow(Step("say", "echo"))], [Echo(frozenset({("other", "say")}))])
    assert str(caught.value) == ("flow echoes step say: connector 'echo' does not serve it "
                                 "(it serves other/say)")


def test_a_classification_from_a_flow_not_in_the_catalog_is_refused() -> None:
    classified = Flow(name="echoes", description="", files={}, metadata_model=Meta,
                      steps=[Step("say", "echo")], classification_by="nomenclature")
    with pytest.raises(CatalogError) as caught:
        Catalog.build([classified], [Echo(frozenset({("echoes", "say")}))])
    assert str(caught.value) == ("flow echoes: its classification comes from flow "
                                 "'nomenclature', which is not in the catalog")


def test_connectors_sharing_a_settings_key_share_its_model() -> None:
    class Other(Echo):
        name = "other-echo"
        settings = type("OtherSettings", (ConnectorSettings,), {})  # type: ignore[assignment]

    with pytest.raises(CatalogError, match="must share one settings model"):
        Catalog.build([], [Echo(frozenset()), Other(frozenset())])


def test_the_shipped_catalog_resolves_every_step() -> None:
    shipped = catalog()
    for f in shipped.flows.values():
        for step in f.steps:
            assert (f.name, step.name) in shipped.connector_for(f.name, step.name).serves
    assert set(shipped.settings.models) == {"depot", "parapheur", "tdt", "sae", "callback",
                                            "chorus"}


def test_step_options_are_checked_against_the_connector_when_built() -> None:
    from connectors.parapheur.connector import ParapheurConnector

    class Visa(ParapheurConnector):
        serves = frozenset({("echoes", "visa")})

    with pytest.raises(CatalogError) as caught:
        Catalog.build([flow(Step("visa", "parapheur", options={"sign": [], "format": "XML"}))],
                      [Visa()])
    message = str(caught.value)
    assert message.startswith("flow echoes step visa: options for parapheur: ")
    assert "sign: name at least one file role to sign" in message
    assert "format: Input should be 'PAdES', 'XAdES' or 'CAdES'" in message
    built = Catalog.build([flow(Step("visa", "parapheur", options={
        "sign": ["facture"], "signed_as": "facture_visee", "format": "PAdES"}))], [Visa()])
    assert built.flows["echoes"].step("visa").options["signed_as"] == "facture_visee"


def test_a_connector_without_options_refuses_them() -> None:
    with pytest.raises(CatalogError, match="options for echo: the connector takes none"):
        Catalog.build([flow(Step("say", "echo", options={"loud": True}))],
                      [Echo(frozenset({("echoes", "say")}))])
